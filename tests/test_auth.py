"""API keys: the key file, hashing at rest, checking ``Authorization`` headers, revocation and
reloading, the FastAPI dependency, and the ``python -m serve_app keys`` CLI end to end."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import pickle
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from deployments.quota import QuotaLimits
from serve_app import auth
from serve_app.auth import KeyRing, Unauthorized, key_dependency
from serve_app.keys import (
    ANONYMOUS,
    KeyFileError,
    KeyNameError,
    Principal,
    create_key,
    read_keys,
    revoke_key,
)
from superres_client.webhooks import new_secret, parse_secret

REPO = Path(__file__).resolve().parent.parent
GOOD_HASH = "ab" * 32


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# --- the file ----------------------------------------------------------------------------------


def test_created_keys_round_trip_through_the_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.jsonl"
    alice = create_key(path, "alice", QuotaLimits(rate=2.5, burst=7, concurrency=3))
    bob = create_key(path, "bob")
    records = read_keys(path)
    assert [r.name for r in records] == ["alice", "bob"]
    assert records[0].limits == QuotaLimits(rate=2.5, burst=7, concurrency=3)
    assert records[1].limits == QuotaLimits()
    assert records[0].created_at is not None
    assert records[0].sha256 == hashlib.sha256(alice.key.encode()).hexdigest()
    assert alice.key.startswith("sr_") and len(alice.key) == 3 + 43
    assert alice.key != bob.key


def test_the_file_holds_hashes_never_keys_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "keys.jsonl"  # the folder is created too
    created = [create_key(path, f"k{i}") for i in range(3)]
    text = path.read_text()
    for new in created:
        assert new.key not in text
        assert new.key.removeprefix("sr_") not in text
        assert new.key[3:20] not in text  # not even a piece of it
        assert hashlib.sha256(new.key.encode()).hexdigest() in text
    assert mode(path) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["keys.jsonl"]  # no temporary left over


def test_a_rewrite_makes_a_too_open_file_private(tmp_path: Path) -> None:
    path = tmp_path / "keys.jsonl"
    create_key(path, "alice")
    path.chmod(0o644)
    create_key(path, "bob")
    assert mode(path) == 0o600
    revoke_key(path, "bob")
    assert mode(path) == 0o600


def test_names_must_be_unique_valid_and_not_reserved(tmp_path: Path) -> None:
    path = tmp_path / "keys.jsonl"
    create_key(path, "alice")
    before = path.read_text()
    for name in ("alice", "anonymous", "a b", "", "x" * 65, "-lead"):
        with pytest.raises(KeyNameError):
            create_key(path, name)
    assert path.read_text() == before


def test_revoke_removes_only_that_key_and_keeps_other_lines(tmp_path: Path) -> None:
    path = tmp_path / "keys.jsonl"
    path.write_text("# team keys\n\n")
    create_key(path, "alice")
    create_key(path, "bob")
    revoked = revoke_key(path, "alice")
    assert revoked.name == "alice"
    assert [r.name for r in read_keys(path)] == ["bob"]
    assert path.read_text().startswith("# team keys\n\n")
    with pytest.raises(KeyNameError, match="no key named 'alice'"):
        revoke_key(path, "alice")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"sha256": "' + GOOD_HASH + '"}', "name: Field required"),
        ('{"name": "x", "sha256": "abc"}', "sha256: String should match pattern"),
        ('{"name": "x", "sha256": "' + GOOD_HASH + '", "key": "sr_plain"}', "key: Extra inputs"),
        ('{"name": "x", "sha256": "' + GOOD_HASH + '", "limits": {"rate": 0}}', "rate: Input"),
        ('{"name": "x", "sha256": "' + GOOD_HASH + '", "limits": 3}', "limits must be"),
        ('{"name": "ok", "sha256": "' + GOOD_HASH + '"}', "'ok' is already used on line 2"),
    ],
)
def test_a_malformed_line_is_named(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "keys.jsonl"
    path.write_text(f"# comment\n{json.dumps({'name': 'ok', 'sha256': GOOD_HASH})}\n\n{line}\n")
    with pytest.raises(KeyFileError, match=f"line 4: .*{message}") as info:
        KeyRing.load(path)
    assert str(path) in str(info.value)
    with pytest.raises(KeyFileError, match="line 4"):  # and nothing is added to such a file
        create_key(path, "another")


def test_a_missing_file_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="keys create NAME"):
        KeyRing.load(tmp_path / "absent.jsonl")


def test_limits_left_out_come_from_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "keys.jsonl"
    lines = [
        {"name": "plain", "sha256": GOOD_HASH},
        {"name": "fast", "sha256": "cd" * 32, "limits": {"rate": 50}},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    defaults = QuotaLimits(rate=3, burst=9, concurrency=4)
    ring = KeyRing.load(path, defaults=defaults)
    assert ring.names == ["plain", "fast"]
    plain, fast = read_keys(path, defaults)
    assert plain.limits == defaults
    assert fast.limits == QuotaLimits(rate=50, burst=9, concurrency=4)


# --- checking a header -------------------------------------------------------------------------


@pytest.fixture
def ring_and_keys(tmp_path: Path) -> tuple[KeyRing, dict[str, str], Path]:
    path = tmp_path / "keys.jsonl"
    keys = {name: create_key(path, name).key for name in ("alice", "bob", "carol")}
    return KeyRing.load(path), keys, path


def test_a_valid_key_gives_its_record(ring_and_keys: tuple[KeyRing, dict[str, str], Path]) -> None:
    ring, keys, _ = ring_and_keys
    assert ring.authenticate(f"Bearer {keys['bob']}").name == "bob"
    assert ring.authenticate(f"bearer  {keys['carol']} ").name == "carol"  # scheme: any case


@pytest.mark.parametrize(
    ("header", "www_authenticate"),
    [
        (None, 'Bearer realm="superres"'),
        ("", 'Bearer realm="superres"'),
        ("   ", 'Bearer realm="superres"'),
        ("Basic dXNlcjpwYXNz", 'Bearer realm="superres", error="invalid_request"'),
        ("Bearer", 'Bearer realm="superres", error="invalid_request"'),
        ("Bearer two words", 'Bearer realm="superres", error="invalid_request"'),
        ("Bearer sr_<script>", 'Bearer realm="superres", error="invalid_request"'),
        ("sr_bare_key_without_scheme", 'Bearer realm="superres", error="invalid_request"'),
        ("Bearer sr_" + "A" * 43, 'Bearer realm="superres", error="invalid_token"'),
    ],
)
def test_missing_malformed_or_wrong_keys_are_refused(
    ring_and_keys: tuple[KeyRing, dict[str, str], Path],
    header: str | None,
    www_authenticate: str,
) -> None:
    ring, _, _ = ring_and_keys
    with pytest.raises(Unauthorized) as info:
        ring.authenticate(header)
    assert info.value.www_authenticate == www_authenticate
    copy = pickle.loads(pickle.dumps(info.value))  # as it would cross a Ray boundary
    assert (str(copy), copy.www_authenticate) == (str(info.value), www_authenticate)


def test_a_near_miss_is_refused(ring_and_keys: tuple[KeyRing, dict[str, str], Path]) -> None:
    ring, keys, _ = ring_and_keys
    key = keys["alice"]
    for wrong in (
        key[:-1],
        key + "x",
        key.upper(),
        key[3:],
        hashlib.sha256(key.encode()).hexdigest(),
    ):
        with pytest.raises(Unauthorized, match="not valid"):
            ring.authenticate(f"Bearer {wrong}")


def test_every_record_is_compared_in_constant_time(
    ring_and_keys: tuple[KeyRing, dict[str, str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    ring, keys, _ = ring_and_keys
    calls: list[tuple[str, str]] = []

    def spy(a: str, b: str) -> bool:
        calls.append((a, b))
        return hmac.compare_digest(a, b)

    monkeypatch.setattr(auth, "hmac", SimpleNamespace(compare_digest=spy))
    assert ring.authenticate(f"Bearer {keys['alice']}").name == "alice"  # the first record
    assert len(calls) == 3  # ... and still all three compared
    calls.clear()
    with pytest.raises(Unauthorized):
        ring.authenticate("Bearer sr_wrong")
    assert len(calls) == 3
    assert all(a == hashlib.sha256(b"sr_wrong").hexdigest() for a, _ in calls)  # digests only


def test_keys_appear_in_no_repr_or_message(
    ring_and_keys: tuple[KeyRing, dict[str, str], Path], tmp_path: Path
) -> None:
    ring, keys, _ = ring_and_keys
    new = create_key(tmp_path / "other.jsonl", "dave")
    record = ring.authenticate(f"Bearer {keys['alice']}")
    shown = " ".join(
        [repr(record), str(record), repr(new), str(new), repr(ring), repr(record.principal)]
    )
    assert "alice" in repr(record) and "dave" in repr(new)
    assert new.key not in shown and keys["alice"] not in shown
    assert record.sha256 not in shown and new.record.sha256 not in shown
    with pytest.raises(Unauthorized) as info:
        ring.authenticate("Bearer sr_" + "B" * 43)
    assert "B" * 43 not in str(info.value)


def test_a_revoked_key_stops_working_once_the_ring_rereads(tmp_path: Path) -> None:
    path = tmp_path / "keys.jsonl"
    alice = create_key(path, "alice").key
    bob = create_key(path, "bob").key
    clock = Clock()
    ring = KeyRing.load(path, reload_every_s=5.0, clock=clock)
    revoke_key(path, "alice")

    clock.now = 4.9  # not checked yet
    assert ring.authenticate(f"Bearer {alice}").name == "alice"
    clock.now = 5.0
    with pytest.raises(Unauthorized):
        ring.authenticate(f"Bearer {alice}")
    assert ring.authenticate(f"Bearer {bob}").name == "bob"
    with pytest.raises(Unauthorized):
        KeyRing.load(path).authenticate(f"Bearer {alice}")

    carol = create_key(path, "carol").key  # new keys arrive the same way
    clock.now = 10.0
    assert ring.authenticate(f"Bearer {carol}").name == "carol"


def test_a_file_broken_while_running_keeps_the_keys_in_use(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keys.jsonl"
    alice = create_key(path, "alice").key
    ring = KeyRing.load(path, reload_every_s=0)
    path.write_text(path.read_text() + "{oops\n")
    assert ring.authenticate(f"Bearer {alice}").name == "alice"
    assert "line 2: not JSON" in caplog.text
    path.unlink()
    assert ring.authenticate(f"Bearer {alice}").name == "alice"


# --- the FastAPI dependency --------------------------------------------------------------------


class Client:
    """A synchronous client for an ASGI app, in process (httpx's ASGI transport)."""

    def __init__(self, app: FastAPI) -> None:
        self._app = app

    def get(self, url: str, headers: dict[str, str] | None = None) -> httpx.Response:
        async def call() -> httpx.Response:
            transport = httpx.ASGITransport(app=self._app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                return await client.get(url, headers=headers)

        return asyncio.run(call())


def make_client(ring: Any) -> Client:
    app = FastAPI()

    @app.exception_handler(Unauthorized)
    async def _unauthorized(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, Unauthorized)
        body = {"error": {"code": "unauthorized", "message": str(exc)}}
        return JSONResponse(body, 401, {"WWW-Authenticate": exc.www_authenticate})

    require_key = key_dependency(ring)

    @app.get("/v1/whoami")
    async def whoami(request: Request, who: Principal = Depends(require_key)) -> dict[str, Any]:
        assert request.state.principal == who
        return {"name": who.name, "limits": who.limits.model_dump() if who.limits else None}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return Client(app)


def test_the_dependency_lets_in_keys_and_refuses_the_rest(
    ring_and_keys: tuple[KeyRing, dict[str, str], Path],
) -> None:
    ring, keys, _ = ring_and_keys
    client = make_client(ring)
    ok = client.get("/v1/whoami", headers={"Authorization": f"Bearer {keys['bob']}"})
    assert ok.status_code == 200
    assert ok.json() == {"name": "bob", "limits": QuotaLimits().model_dump()}
    missing = client.get("/v1/whoami")
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"] == 'Bearer realm="superres"'
    assert missing.json()["error"]["code"] == "unauthorized"
    wrong = client.get("/v1/whoami", headers={"Authorization": "Bearer sr_nope"})
    assert wrong.status_code == 401
    assert "invalid_token" in wrong.headers["WWW-Authenticate"]
    assert client.get("/healthz").status_code == 200
    schemes = client.get("/openapi.json").json()["components"]["securitySchemes"]
    assert schemes["ApiKey"]["scheme"] == "bearer"


def test_without_a_ring_every_caller_is_anonymous() -> None:
    client = make_client(None)
    answer = client.get("/v1/whoami", headers={"Authorization": "Bearer anything"})
    assert answer.json() == {"name": ANONYMOUS.name, "limits": None}
    assert ANONYMOUS.anonymous
    assert "securitySchemes" not in client.get("/openapi.json").json().get("components", {})


def test_the_ring_may_be_found_at_request_time(
    ring_and_keys: tuple[KeyRing, dict[str, str], Path],
) -> None:
    ring, keys, _ = ring_and_keys
    holder: dict[str, KeyRing | None] = {"ring": None}
    client = make_client(lambda: holder["ring"])
    assert client.get("/v1/whoami").json()["name"] == "anonymous"
    holder["ring"] = ring
    assert client.get("/v1/whoami").status_code == 401
    good = client.get("/v1/whoami", headers={"Authorization": f"Bearer {keys['carol']}"})
    assert good.json()["name"] == "carol"


# --- the CLI, as an operator runs it ------------------------------------------------------------


def cli(
    *args: str, env_file: Path | None = None, webhook_secret: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"SUPERRES_API_KEYS_FILE", "SUPERRES_WEBHOOK_SECRET"}
    }
    if env_file is not None:
        env["SUPERRES_API_KEYS_FILE"] = str(env_file)
    if webhook_secret is not None:
        env["SUPERRES_WEBHOOK_SECRET"] = webhook_secret
    return subprocess.run(
        [sys.executable, "-m", "serve_app", "keys", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_create_list_revoke(tmp_path: Path) -> None:
    path = tmp_path / "keys.jsonl"
    made = cli(
        "create", "alice", "--file", str(path), "--rate", "2", "--burst", "8", "--concurrency", "3"
    )
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert made.stdout == key + "\n"  # the key alone, once
    assert key not in made.stderr
    assert "shown only this once" in made.stderr
    assert mode(path) == 0o600
    assert key not in path.read_text()

    record = KeyRing.load(path).authenticate(f"Bearer {key}")
    assert record.name == "alice"
    assert record.limits == QuotaLimits(rate=2, burst=8, concurrency=3)

    again = cli("create", "alice", "--file", str(path))
    assert again.returncode == 1
    assert "already exists" in again.stderr and again.stdout == ""

    bob = cli("create", "bob", env_file=path)  # the file from SUPERRES_API_KEYS_FILE
    assert bob.returncode == 0, bob.stderr
    listed = cli("list", env_file=path)
    assert listed.returncode == 0, listed.stderr
    assert [line.split("\t")[0] for line in listed.stdout.splitlines()] == ["alice", "bob"]
    assert "rate 2/s, burst 8, concurrency 3" in listed.stdout
    for secret in (key, bob.stdout.strip(), record.sha256):
        assert secret not in listed.stdout + listed.stderr

    gone = cli("revoke", "alice", "--file", str(path))
    assert gone.returncode == 0, gone.stderr
    with pytest.raises(Unauthorized):
        KeyRing.load(path).authenticate(f"Bearer {key}")
    assert cli("revoke", "alice", "--file", str(path)).returncode == 1


def test_cli_refuses_bad_input_clearly(tmp_path: Path) -> None:
    path = tmp_path / "keys.jsonl"
    no_file = cli("list")
    assert no_file.returncode == 1 and "SUPERRES_API_KEYS_FILE" in no_file.stderr
    bad_limit = cli("create", "x", "--file", str(path), "--rate", "0")
    assert bad_limit.returncode == 1 and "--rate" in bad_limit.stderr
    assert not path.exists()
    path.write_text("{broken\n")
    broken = cli("list", "--file", str(path))
    assert broken.returncode == 1 and "line 1: not JSON" in broken.stderr


def test_cli_prints_a_keys_webhook_secret_derived_from_the_services(tmp_path: Path) -> None:
    path = tmp_path / "keys.jsonl"
    assert cli("create", "alice", "--file", str(path)).returncode == 0
    service = new_secret()
    shown = cli("webhook-secret", "alice", "--file", str(path), webhook_secret=service)
    assert shown.returncode == 0, shown.stderr
    (alice,) = read_keys(path)
    assert shown.stdout == parse_secret(service).for_key(alice.fingerprint).reveal() + "\n"
    # the key revoked and created again under the same name: its webhook secret changes too
    assert cli("revoke", "alice", "--file", str(path)).returncode == 0
    assert cli("create", "alice", "--file", str(path)).returncode == 0
    anew = cli("webhook-secret", "alice", "--file", str(path), webhook_secret=service)
    assert anew.returncode == 0 and anew.stdout.startswith("whsec_")
    assert anew.stdout != shown.stdout
    unknown = cli("webhook-secret", "bob", "--file", str(path), webhook_secret=service)
    assert unknown.returncode == 1 and "no key named 'bob'" in unknown.stderr
    unset = cli("webhook-secret", "alice", "--file", str(path))
    assert unset.returncode == 1 and "SUPERRES_WEBHOOK_SECRET" in unset.stderr
