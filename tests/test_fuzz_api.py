"""Schema-driven fuzzing of the live HTTP API: schemathesis reads ``/openapi.json`` from a real
Ray Serve app and sends what the schema allows and what it forbids.

Two targets: the session's app (API keys off) and one started here with a key file (keys on, so
that the auth checks apply). Each gets one deterministic schemathesis run (its examples, coverage
and fuzzing phases, as ``st run`` does, with a bounded number of examples per operation); the
tests are plain assertions over what the run recorded: no check failed on any operation, no
response was a 500, every error is the JSON envelope of the README, and the fuzzer really sent
bodies, real small images among them.

Uploads (the multipart ``file`` and the raw ``application/octet-stream`` / ``image/*`` bodies) are
drawn from real small images of every kind the service reads, damaged copies of them, headers that
declare a huge canvas, and random bytes, so that requests get past the 415 and reach the model.
``model`` and ``background_model`` are drawn half the time from the names the service serves.

The engine is driven directly rather than through schemathesis' pytest loader
(``schemathesis.pytest.from_fixture``), which fails on pytest 9.2 (it sets ``Function._nodeid``).
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import strategies as st
from PIL import Image as PILImage
from pydantic import SecretStr
from schemathesis.engine import events, from_schema

from deployments.quota import QuotaLimits
from serve_app.keys import create_key
from superres_client.options import NO_BACKGROUND_MODEL
from superres_client.webhooks import new_secret
from tests.conftest import tiny_app_args

pytestmark = pytest.mark.serve

OPERATIONS = (
    "POST /v1/upscale",
    "POST /v1/face-enhance",
    "POST /v1/jobs",
    "GET /v1/jobs",
    "GET /v1/jobs/{job_id}",
    "DELETE /v1/jobs/{job_id}",
    "GET /v1/models",
    "GET /v1/stats",
    "GET /v1/webhooks/secret",
    "GET /healthz",
    "GET /readyz",
)
# Fields whose value the app fetches or posts to: never sent, as the fuzzer would make the service
# reach addresses outside this machine (only loopback traffic is allowed here).
URL_FIELDS = frozenset({"image_url", "image_urls", "webhook_url"})
UPLOAD_MEDIA_TYPES = ("application/octet-stream", "image/png", "image/jpeg", "image/webp")
EXAMPLES_PER_OPERATION = 100  # fuzzing phase, per operation
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "missing_required_header",
    "unsupported_method",
    "allow_header_conformance",
)
AUTH_CHECKS = ("ignored_auth",)  # only where keys are on
# Checks left out, and why (each is a property this API does not promise, not a bug hidden):
# * positive_data_acceptance: schema-valid requests are refused on purpose where the schema cannot
#   say why: any bytes match `format: binary` (415 when not an image), any string may name a model
#   (400 unknown_model), an option may not come both as query parameter and form field (422), and
#   `denoise` excludes `face_enhance` (422).
# * use_after_free, ensure_resource_availability, object_level_authorization: stateful; this API
#   has no resources to create and fetch.

# Reported app bugs: their check is expected to fail until fixed.
KNOWN_BUGS: dict[tuple[str, str, str], str] = {}  # (test, target or "*", operation) -> the bug
TRANSIENT_CODES = {"model_unavailable", "storage_unavailable", "overloaded"}


# --- uploads -------------------------------------------------------------------------------------


def _encode(arr: np.ndarray, fmt: str, mode: str | None = None, **kw: Any) -> bytes:
    image = PILImage.fromarray(arr)
    if mode is not None:
        image = image.convert(mode)
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_declaring(width: int, height: int) -> bytes:
    """A well-formed 8-bit gray PNG whose header declares ``width`` x ``height`` (one tiny IDAT)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )


def _animated_gif(arr: np.ndarray) -> bytes:
    frames = [PILImage.fromarray(arr), PILImage.fromarray(255 - arr)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buf.getvalue()


def sample_images() -> dict[str, bytes]:
    """Small real images of every kind the service reads (and some it refuses)."""
    rng = np.random.default_rng(7)
    rgb = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    rgba = rng.integers(0, 256, (10, 9, 4), dtype=np.uint8)
    gray16 = rng.integers(0, 65536, (8, 11), dtype=np.uint16)
    return {
        "png-rgb": _encode(rgb, "PNG"),
        "png-rgba": _encode(rgba, "PNG"),
        "png-gray": _encode(rgb[..., 0], "PNG"),
        "png-gray16": _encode(gray16, "PNG"),
        "png-palette": _encode(rgb, "PNG", "P", transparency=0),
        "png-1x1": _encode(rgb[:1, :1], "PNG"),
        "jpeg": _encode(rgb, "JPEG", quality=85),
        "jpeg-gray": _encode(rgb[..., 1], "JPEG"),
        "jpeg-cmyk": _encode(rgb, "JPEG", "CMYK"),
        "webp-lossy": _encode(rgb, "WEBP", quality=80),
        "webp-lossless-alpha": _encode(rgba, "WEBP", lossless=True),
        "gif": _encode(rgb, "GIF", "P"),
        "gif-animated": _animated_gif(rgb),
        "bmp": _encode(rgb, "BMP"),
        "tiff": _encode(rgb, "TIFF"),
        "png-declares-huge": _png_declaring(60_000, 60_000),
        "png-declares-just-over-limit": _png_declaring(1001, 1000),  # the session's limit is 1 MP
    }


SAMPLES = sample_images()


def _damaged(data: bytes, cut: int, flip: int) -> bytes:
    """A truncated copy with one byte flipped (both positions wrap around the length)."""
    kept = data[: max(1, cut % len(data))]
    at = flip % len(kept)
    return kept[:at] + bytes([kept[at] ^ 0xFF]) + kept[at + 1 :]


IMAGES = st.sampled_from(sorted(SAMPLES.values()))
UPLOADS = st.one_of(
    IMAGES,
    IMAGES,  # twice: half the uploads are real images
    st.builds(_damaged, IMAGES, st.integers(0, 4096), st.integers(0, 4096)),
    st.binary(max_size=64),
)


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    """Process-wide (schemathesis calls global hooks only here): every request of every phase
    passes through it. Drops URL_FIELDS from a body (schemathesis revalidates the case)."""
    if isinstance(case.body, dict) and URL_FIELDS & case.body.keys():
        case.body = {k: v for k, v in case.body.items() if k not in URL_FIELDS}


def register_upload_strategies() -> None:
    """Process-wide in schemathesis (nothing else in the suite uses it): every `format: binary`
    string and every raw upload body is drawn from UPLOADS."""
    schemathesis.openapi.format("binary", UPLOADS)
    for media_type in UPLOAD_MEDIA_TYPES:
        schemathesis.openapi.media_type(media_type, UPLOADS)


# --- the targets ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    url: str
    key: str | None = None  # the API key, where keys are on

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.key}"} if self.key else {}


@pytest.fixture(scope="module")
def open_target(serve_app) -> Target:
    return Target(serve_app.url)


@pytest.fixture(scope="module")
def keyed_target(serve_app, tiny_weights, tmp_path_factory) -> Iterator[Target]:
    """The app with a key file, on its own route prefix; the key's quota never runs out here."""
    from ray import serve

    from serve_app.app import build

    path = Path(tmp_path_factory.mktemp("fuzz-keys")) / "api-keys"
    quota = QuotaLimits(rate=1_000_000, burst=1_000_000, concurrency=1000)
    key = create_key(path, "fuzzer", quota).key
    args = tiny_app_args(
        tiny_weights,
    )
    # its own bucket: one JobRunner per bucket; a webhook secret: /v1/webhooks/secret answers 200
    update = {
        "api_keys_file": path,
        "s3_bucket": "superres-fuzz-keyed",
        "webhook_secret": SecretStr(new_secret()),
    }
    settings = serve_app.settings.model_copy(update=update)
    serve.run(build(args, settings), name="fuzz-keyed", route_prefix="/fuzz-keyed")
    yield Target(f"{serve_app.url}/fuzz-keyed", key)
    serve.delete("fuzz-keyed")


# --- the run -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Exchange:
    operation: str
    phase: str  # e.g. "fuzzing-positive", "coverage-negative"
    method: str
    content_type: str
    body: bytes
    status: int
    headers: dict[str, str]
    content: bytes


@dataclass(frozen=True)
class Finding:
    operation: str
    check: str
    message: str
    response: str
    reproduce: str

    def __str__(self) -> str:
        return f"{self.operation}: {self.check}: {self.message}\n{self.response}\n{self.reproduce}"


@dataclass
class FuzzRun:
    target: str
    operations: set[str] = field(default_factory=set)
    exchanges: list[Exchange] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def record(self, recorder: Any) -> None:
        """What one scenario (one operation in one phase) sent, got, and which checks failed."""
        label = recorder.label
        responses = {}
        for case_id, interaction in recorder.interactions.items():
            response = interaction.response
            if response is None:
                continue
            responses[case_id] = response
            meta = recorder.cases[case_id].value.meta
            request = interaction.request
            self.exchanges.append(
                Exchange(
                    operation=label,
                    phase=f"{meta.phase.name.value}-{meta.generation.mode.value}" if meta else "",
                    method=request.method,
                    content_type=(request.headers.get("Content-Type") or [""])[0],
                    body=request.body or b"",
                    status=response.status_code,
                    headers={k.lower(): v[0] for k, v in response.headers.items()},
                    content=response.content,
                )
            )
        for case_id, checks in recorder.checks.items():
            response = responses.get(case_id)
            for check in checks:
                if check.failure_info is None:
                    continue
                failure = check.failure_info.failure
                finding = Finding(
                    operation=label,
                    check=check.name,
                    message=f"{failure.title}. {failure.message}".strip(),
                    response=f"[{response.status_code}] {response.content[:400]!r}"
                    if response
                    else "",
                    reproduce=check.failure_info.code_sample,
                )
                seen = {(f.operation, f.check, f.message) for f in self.findings}
                if (finding.operation, finding.check, finding.message) not in seen:
                    self.findings.append(finding)


def model_names(target: Target) -> list[str]:
    """Names worth trying for ``model`` / ``background_model``: the served ones (GET /v1/models)
    and ``none``; the fuzzer draws random strings too. (Names the registry knows but the app does
    not serve are tried in test_a_model_the_upscaler_does_not_serve_is_named_once.)"""
    models = httpx.get(f"{target.url}/v1/models", headers=target.headers, timeout=30).json()
    return sorted({*(m["name"] for m in models), NO_BACKGROUND_MODEL})


def fuzz(name: str, target: Target) -> FuzzRun:
    """One deterministic schemathesis run against the app at ``target``."""
    register_upload_strategies()
    names = {"dictionary": "model-names", "probability": 0.5}
    no_extra_sources = {"extra-data-sources": {"responses": False}}
    checks = CHECKS + (AUTH_CHECKS if target.key else ())
    config: dict[str, Any] = {
        "base-url": target.url,
        "workers": 1,
        "continue-on-failure": True,
        "request-timeout": 60,
        "dictionaries": {"model-names": {"values": model_names(target)}},
        "parameters": {
            f"{where}.{field}": names
            for where in ("query", "body")
            for field in ("model", "background_model")
        },
        "generation": {
            "mode": "all",
            "max-examples": EXAMPLES_PER_OPERATION,
            "deterministic": True,
            "no-shrink": True,
            "unique-inputs": True,
            # Keys off: no Authorization header, or every "missing Authorization" case is a 200.
            "with-security-parameters": target.key is not None,
        },
        "phases": {
            "examples": {"enabled": True},
            "coverage": {"enabled": True, **no_extra_sources},
            # Generation must not depend on what the server said (result ids are random).
            "fuzzing": {"enabled": True, **no_extra_sources, "error-feedback": {"enabled": False}},
            "stateful": {"enabled": False},
        },
        "checks": {
            "enabled": False,
            **{check: {"enabled": True} for check in checks},
            # 503 is a documented answer (model weights or storage unavailable; the session has no
            # GFPGAN weights, so face enhancement is always 503); any other 5xx fails.
            "not_a_server_error": {
                "enabled": True,
                "expected-statuses": ["2xx", "3xx", "4xx", "503"],
            },
        },
    }
    if target.key:
        config["auth"] = {"openapi": {"ApiKey": {"bearer": target.key}}}
    schema = schemathesis.openapi.from_url(
        f"{target.url}/openapi.json",
        config=schemathesis.Config.from_dict(config),
        headers=target.headers,
    )
    run = FuzzRun(name)
    for result in schema.get_all_operations():
        run.operations.add(result.ok().label)
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            run.record(event.recorder)
        elif isinstance(event, events.NonFatalError):
            run.errors.append(f"{event.label}: {event.info.title}: {event.info.message}")
        elif isinstance(event, events.FatalError):
            run.errors.append(f"fatal: {event.exception!r}")
    return run


@pytest.fixture(scope="module", params=["open", "keyed"])
def fuzz_run(request: pytest.FixtureRequest) -> FuzzRun:
    return fuzz(request.param, request.getfixturevalue(f"{request.param}_target"))


# --- what each run must show ---------------------------------------------------------------------


def _expect_known_bug(request: pytest.FixtureRequest, test: str, target: str, op: str) -> None:
    reason = KNOWN_BUGS.get((test, target, op)) or KNOWN_BUGS.get((test, "*", op))
    if reason:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))


def test_every_operation_of_the_schema_is_fuzzed(fuzz_run: FuzzRun) -> None:
    assert not fuzz_run.errors, "\n".join(fuzz_run.errors)
    assert fuzz_run.operations == set(OPERATIONS), "new operations go into OPERATIONS"
    assert {e.operation for e in fuzz_run.exchanges} == set(OPERATIONS)


@pytest.mark.parametrize("operation", OPERATIONS)
def test_no_schemathesis_check_fails(
    fuzz_run: FuzzRun, operation: str, request: pytest.FixtureRequest
) -> None:
    _expect_known_bug(request, "checks", fuzz_run.target, operation)
    found = [f for f in fuzz_run.findings if f.operation == operation]
    assert not found, "\n\n".join(map(str, found))


@pytest.mark.parametrize("operation", OPERATIONS)
def test_no_response_is_a_server_error_but_a_documented_503(
    fuzz_run: FuzzRun, operation: str, request: pytest.FixtureRequest
) -> None:
    _expect_known_bug(request, "5xx", fuzz_run.target, operation)
    bad = [
        e
        for e in fuzz_run.exchanges
        if e.operation == operation and e.status >= 500 and e.status != 503
    ]
    assert not bad, [(e.method, e.operation, e.status, e.content[:300]) for e in bad]


def test_every_error_is_the_json_envelope(fuzz_run: FuzzRun) -> None:
    """README: errors are always {"error": {"code", "message"}}; a 503 says when to retry and a
    405 which methods are allowed."""
    for e in fuzz_run.exchanges:
        if e.status < 400 or e.method == "HEAD":
            continue
        where = f"{e.method} {e.operation} -> {e.status}: {e.content[:300]!r}"
        assert e.headers.get("content-type", "").startswith("application/json"), where
        body = json.loads(e.content)
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, where
        assert isinstance(body["error"]["code"], str) and body["error"]["code"], where
        assert isinstance(body["error"]["message"], str) and body["error"]["message"], where
        if e.status == 503:
            assert body["error"]["code"] in TRANSIENT_CODES, where
            assert e.headers.get("retry-after", "").isdigit(), where
        if e.status == 405:
            assert e.headers.get("allow"), where


def _carries_an_image(e: Exchange) -> bool:
    if e.content_type.startswith("multipart/"):
        return any(image in e.body for image in SAMPLES.values())
    return e.body in SAMPLES.values()


def _error_code(e: Exchange) -> str | None:
    return json.loads(e.content)["error"]["code"] if e.status >= 400 else None


@pytest.mark.parametrize("operation", ["POST /v1/upscale", "POST /v1/face-enhance"])
def test_the_fuzzer_sent_bodies_and_real_images(fuzz_run: FuzzRun, operation: str) -> None:
    sent = [e for e in fuzz_run.exchanges if e.operation == operation and e.method == "POST"]
    kinds = Counter(e.content_type.split(";")[0] for e in sent if e.body)
    assert kinds["multipart/form-data"] >= 20, kinds
    assert sum(kinds[t] for t in UPLOAD_MEDIA_TYPES) >= 20, kinds
    with_image = [e for e in sent if _carries_an_image(e)]
    assert len(with_image) >= 20, f"{len(with_image)} of {len(sent)} requests carried an image"
    if operation == "POST /v1/upscale":  # the model answered, and the image checks refused some
        answers = Counter(_error_code(e) or e.status for e in with_image)
        assert answers[200] >= 5, answers
        assert answers.keys() & {"corrupt_image", "too_large", "animated_image"}, answers


# --- found by fuzzing ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gfpgan-v1.4", "realesrgan-x2plus"])
def test_a_model_the_upscaler_does_not_serve_is_named_once(serve_app, name: str) -> None:
    """Names the app's registry knows but its Upscaler does not serve reach the replica, which
    refuses them; the 400 must read like the Ingress's own (e.g. for a random name)."""
    with serve_app.client() as client:
        r = client.post("/v1/upscale", params={"model": name}, content=SAMPLES["png-rgb"])
    assert r.status_code == 400, r.text
    message = r.json()["error"]["message"]
    assert message.startswith(f"unknown model {name!r}; known models: "), message
