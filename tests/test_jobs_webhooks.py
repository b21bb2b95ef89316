"""Jobs from image URLs and signed webhooks, through the real app, with local servers only."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from pydantic import SecretStr

from models.webhooks import new_secret, verify
from tests.conftest import tiny_app_args
from tests.httpserver import FileServer
from tests.test_api import encode, fetch, noise
from tests.test_jobs_api import wait_for

pytestmark = pytest.mark.serve

SECRET = new_secret()


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


@pytest.fixture(scope="module")
def hooks_app(serve_app, tiny_weights) -> Iterator[str]:
    from ray import serve

    from serve_app.app import build

    args = tiny_app_args(
        tiny_weights,
    )
    settings = serve_app.settings.model_copy(
        update={
            "url_allowlist": "127.0.0.1/32",
            "webhook_secret": SecretStr(SECRET),
            "s3_bucket": "superres-hooks",  # one JobRunner per bucket
        }
    )
    serve.run(build(args, settings), name="hooks", route_prefix="/hooks")
    yield f"{serve_app.url}/hooks"
    serve.delete("hooks")


def test_a_job_from_an_image_url_delivers_a_signed_webhook(hooks_app, receiver) -> None:
    image = encode(noise(16, 12, seed=61))
    with (
        FileServer({"in.png": image}) as files,
        httpx.Client(base_url=hooks_app, timeout=60) as client,
    ):
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
    for headers, body in mine:
        verify(SECRET, headers, body)  # raises if the signature is wrong
        assert json.loads(body)["type"] == "job.succeeded"
    with pytest.raises(Exception, match="ignature"):
        verify(new_secret(), mine[1][0], mine[1][1])  # a wrong secret does not verify


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("http://169.254.169.254/latest/meta-data", "invalid_option"),  # metadata service
        ("file:///etc/passwd", "invalid_option"),
        ("http://10.0.0.1/x.png", "invalid_option"),
    ],
)
def test_private_targets_are_refused(hooks_app, url: str, code: str) -> None:
    with httpx.Client(base_url=hooks_app, timeout=60) as client:
        for body in ({"image_url": url}, {"image_url": "http://127.0.0.1:9/x", "webhook_url": url}):
            r = client.post("/v1/jobs", json=body)
            assert (r.status_code, r.json()["error"]["code"]) == (400, code), r.text
