"""API keys and per-key quotas through the real app: real Serve, real S3, a real key file."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from deployments.quota import QuotaLimits
from serve_app.keys import create_key
from tests.conftest import tiny_app_args
from tests.test_api import encode, noise

pytestmark = pytest.mark.serve


@dataclass
class AuthApp:
    url: str
    keys: dict[str, str]


@pytest.fixture(scope="module")
def auth_app(serve_app, tiny_weights, tmp_path_factory) -> Iterator[AuthApp]:
    from ray import serve

    from serve_app.app import build

    path = Path(tmp_path_factory.mktemp("keys")) / "api-keys"
    keys = {
        "alice": create_key(path, "alice", QuotaLimits(rate=0.2, burst=2, concurrency=1)).key,
        "bob": create_key(path, "bob", QuotaLimits(rate=50, burst=50, concurrency=8)).key,
    }
    args = tiny_app_args(
        tiny_weights,
        jobs=False,  # one JobRunner per bucket: the session app's
    )
    settings = serve_app.settings.model_copy(update={"api_keys_file": path})
    serve.run(build(args, settings), name="auth-test", route_prefix="/auth-test")
    yield AuthApp(f"{serve_app.url}/auth-test", keys)
    serve.delete("auth-test")


def post(app: AuthApp, key: str | None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.post(
        f"{app.url}/v1/upscale", content=encode(noise(8, 8)), headers=headers, timeout=60
    )


def test_health_is_open_and_work_needs_a_key(auth_app: AuthApp) -> None:
    assert httpx.get(f"{auth_app.url}/healthz").status_code == 200
    assert httpx.get(f"{auth_app.url}/readyz").status_code == 200
    for key, error in ((None, None), ("sr_wrong", "invalid_token"), ("not a token", None)):
        r = post(auth_app, key)
        assert r.status_code == 401, r.text
        assert r.json()["error"]["code"] == "unauthorized"
        assert r.headers["www-authenticate"].startswith('Bearer realm="superres"')
        if error:
            assert f'error="{error}"' in r.headers["www-authenticate"]
    assert httpx.get(f"{auth_app.url}/v1/models").status_code == 401
    r = post(auth_app, auth_app.keys["bob"])
    assert r.status_code == 200, r.text
    assert r.headers.get("x-request-id")
    models = httpx.get(
        f"{auth_app.url}/v1/models", headers={"authorization": f"Bearer {auth_app.keys['bob']}"}
    )
    assert models.status_code == 200


def test_a_key_over_its_rate_gets_429_with_retry_after(auth_app: AuthApp) -> None:
    statuses = [post(auth_app, auth_app.keys["alice"]) for _ in range(3)]
    assert [r.status_code for r in statuses[:2]] == [200, 200]
    refused = statuses[2]
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "quota_exceeded"
    assert int(refused.headers["retry-after"]) >= 1
    # another key is not affected
    assert post(auth_app, auth_app.keys["bob"]).status_code == 200


def test_openapi_declares_the_bearer_scheme(auth_app: AuthApp) -> None:
    spec = httpx.get(f"{auth_app.url}/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert any(s.get("scheme", "").lower() == "bearer" for s in schemes.values())
