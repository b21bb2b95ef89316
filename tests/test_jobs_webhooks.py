"""Jobs from image URLs and signed webhooks, through the real app, with local servers only."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from pydantic import SecretStr, ValidationError

from deployments.quota import QuotaLimits
from models.jobs import PRIVATE_FIELDS
from models.settings import Settings
from serve_app.errors import ApiError
from serve_app.keys import ANONYMOUS, Principal, create_key
from serve_app.webhooks_api import secret_for
from superres_client import Client, NotFound
from superres_client.webhooks import SignatureMismatchError, new_secret, parse_secret, verify
from tests.conftest import tiny_app_args
from tests.httpserver import FileServer
from tests.test_api import encode, fetch, noise
from tests.test_jobs_api import wait_for

pytestmark = pytest.mark.serve

SECRET = new_secret()
OLD_SECRET = new_secret()  # the hooks app is mid-rotation: SECRET is the new one, both sign


@dataclass
class Receiver:
    """Answers 500 to the first delivery of each message, then 200; keeps what came."""

    url: str = ""
    calls: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    got = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            with got.lock:
                got.calls.append(({k.lower(): v for k, v in self.headers.items()}, body))
                first = (
                    sum(h["webhook-id"] == self.headers["webhook-id"] for h, _ in got.calls) == 1
                )
            self.send_response(500 if first else 200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    got.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    yield got
    server.shutdown()


@dataclass
class HooksApp:
    url: str
    keys: dict[str, str]  # name -> API key

    def client(self, name: str) -> httpx.Client:
        auth = {"authorization": f"Bearer {self.keys[name]}"}
        return httpx.Client(base_url=self.url, headers=auth, timeout=60)


@pytest.fixture(scope="module")
def hooks_app(serve_app, tiny_weights, tmp_path_factory) -> Iterator[HooksApp]:
    from ray import serve

    from serve_app.app import build

    path = tmp_path_factory.mktemp("hook-keys") / "api-keys"
    keys = {name: create_key(path, name).key for name in ("alice", "bob")}
    settings = serve_app.settings.model_copy(
        update={
            "url_allowlist": "127.0.0.1/32",
            "webhook_secret": SecretStr(f"{SECRET} {OLD_SECRET}"),
            "api_keys_file": path,
            "s3_bucket": "superres-hooks",  # one JobRunner per bucket
        }
    )
    serve.run(build(tiny_app_args(tiny_weights), settings), name="hooks", route_prefix="/hooks")
    yield HooksApp(f"{serve_app.url}/hooks", keys)
    serve.delete("hooks")


def test_a_job_from_an_image_url_delivers_a_webhook_signed_for_its_key(
    hooks_app: HooksApp, receiver: Receiver
) -> None:
    image = encode(noise(16, 12, seed=61))
    with FileServer({"in.png": image}) as files, hooks_app.client("alice") as client:
        r = client.post(
            "/v1/jobs",
            json={
                "image_url": files.url("in.png"),
                "options": {"scale": 2},
                "webhook_url": receiver.url,
            },
        )
        assert r.status_code == 202, r.text
        done = wait_for(client, r.json()["id"])
    assert done["status"] == "succeeded", done
    assert fetch(done["result"]["url"]).size == (24, 32)
    assert len(done["deliveries"]) == 1, done
    (delivery,) = done["deliveries"]
    assert delivery["delivered"] and len(delivery["attempts"]) == 2  # 500, then 200
    mine = [(h, b) for h, b in receiver.calls if json.loads(b)["data"]["id"] == done["id"]]
    assert len(mine) == 2 and mine[0][0]["webhook-id"] == mine[1][0]["webhook-id"]
    assert mine[0][0]["webhook-id"] == delivery["id"] == f"msg_{done['id']}_job_succeeded"

    # Each key's holder asks for its own secret (the SDK's call): alice's verifies, no other does.
    with Client(hooks_app.url, api_key=hooks_app.keys["alice"]) as sr:
        alices = sr.webhook_secret()
    with Client(hooks_app.url, api_key=hooks_app.keys["bob"]) as sr:
        bobs = sr.webhook_secret()
    assert alices.startswith("whsec_") and alices != bobs
    with hooks_app.client("alice") as client:
        previous = client.get("/v1/webhooks/secret").json()["previous"]
    assert len(previous) == 1  # alice's secret under the old service secret, still signing
    for headers, body in mine:
        assert len(headers["webhook-signature"].split()) == 2  # one per service secret
        for secret in (alices, *previous):
            verify(secret, headers, body)  # raises if the signature is wrong
        assert json.loads(body)["type"] == "job.succeeded"
        assert not PRIVATE_FIELDS & set(json.loads(body)["data"])  # no owner, key fingerprint
    assert not PRIVATE_FIELDS & set(done)
    for other in (bobs, SECRET, OLD_SECRET, new_secret()):
        with pytest.raises(SignatureMismatchError):
            verify(other, mine[1][0], mine[1][1])


def test_the_secret_route_needs_a_key_and_is_not_cached(hooks_app: HooksApp) -> None:
    r = httpx.get(f"{hooks_app.url}/v1/webhooks/secret", timeout=30)
    assert (r.status_code, r.json()["error"]["code"]) == (401, "unauthorized")
    with hooks_app.client("bob") as client:
        r = client.get("/v1/webhooks/secret")
    assert r.status_code == 200 and r.json()["key"] == "bob"
    assert r.headers["cache-control"] == "no-store"


def test_without_webhooks_the_secret_route_is_a_404(serve_app) -> None:
    with Client(serve_app.url) as sr, pytest.raises(NotFound, match="not configured"):
        sr.webhook_secret()


def test_the_secret_is_per_key_and_never_the_services_with_keys_off() -> None:
    service, old = parse_secret(SECRET), parse_secret(OLD_SECRET)
    carol = Principal("carol", QuotaLimits(), key_id="0f1e2d3c4b5a6978")
    view = secret_for([service], carol)
    assert view.key == "carol" and view.secret == service.for_key(carol.key_id).reveal() != SECRET
    assert view.previous == []
    # carol's key revoked and created again under her name: a new key, so a new secret
    again = Principal("carol", QuotaLimits(), key_id="8796a5b4c3d2e1f0")
    assert secret_for([service], again).secret != view.secret
    # mid-rotation of the service's secret: the new one's derivation first, the old one's after
    rotating = secret_for([service, old], carol)
    assert rotating.secret == view.secret
    assert rotating.previous == [old.for_key(carol.key_id).reveal()]
    with pytest.raises(ApiError) as refused:
        secret_for([service], ANONYMOUS)
    assert (refused.value.status, refused.value.code) == (403, "forbidden")
    with pytest.raises(ApiError) as off:
        secret_for([], carol)
    assert off.value.status == 404


def test_settings_take_several_webhook_secrets_for_a_rotation() -> None:
    settings = Settings(webhook_secret=SecretStr(f" {SECRET}  {OLD_SECRET} "))
    assert [s.reveal() for s in settings.webhook_signers()] == [SECRET, OLD_SECRET]
    assert Settings().webhook_signers() == ()
    for bad in ("   ", f"{SECRET} whsec_!!"):
        with pytest.raises(ValidationError) as refused:
            Settings(webhook_secret=SecretStr(bad))
        assert SECRET not in str(refused.value)  # the reason, never the secret


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("http://169.254.169.254/latest/meta-data", "invalid_option"),  # metadata service
        ("file:///etc/passwd", "invalid_option"),
        ("http://10.0.0.1/x.png", "invalid_option"),
    ],
)
def test_private_targets_are_refused(hooks_app: HooksApp, url: str, code: str) -> None:
    with hooks_app.client("alice") as client:
        for body in ({"image_url": url}, {"image_url": "http://127.0.0.1:9/x", "webhook_url": url}):
            r = client.post("/v1/jobs", json=body)
            assert (r.status_code, r.json()["error"]["code"]) == (400, code), r.text
