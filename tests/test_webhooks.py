"""Standard Webhooks signing, verifying and delivery (clients/python/superres_client/webhooks.py), against real local
receivers on 127.0.0.1 that check each request with the snippet from docs/webhooks.md."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import pickle
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace, TracebackType
from typing import Any, TypeVar

import httpx
import pytest

from models.webhook_delivery import Delivery, Send, backoff, deliver, in_thread
from superres_client.webhooks import (
    MissingHeaderError,
    SignatureMismatchError,
    TimestampOutOfToleranceError,
    WebhookSecret,
    WebhookSecretError,
    event,
    event_msg_id,
    headers,
    new_secret,
    parse_secret,
    sign,
    verify,
)

DOCS = Path(__file__).resolve().parent.parent / "docs" / "webhooks.md"
T = TypeVar("T")

# The test vector of the reference Python library of the spec: standard-webhooks/standard-webhooks,
# libraries/python/tests/test_webhooks.py, test_sign_function (read at commit 33d368b2).
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

SECRET = new_secret()
BODY = event("job.succeeded", {"id": "job_1", "status": "succeeded"})


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


def docs_verifier() -> Callable[..., None]:
    """``verify_webhook`` exactly as docs/webhooks.md shows it."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.DOTALL)
    (code,) = [b for b in blocks if "def verify_webhook" in b]
    namespace: dict[str, Any] = {}
    exec(code, namespace)
    return namespace["verify_webhook"]


# --- signing and verifying ----------------------------------------------------------------------


def test_the_reference_vector_signs_and_verifies() -> None:
    assert sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE
    sent = {
        "Webhook-Id": VECTOR_ID,
        "Webhook-Timestamp": str(VECTOR_TIMESTAMP),
        "Webhook-Signature": VECTOR_SIGNATURE,
    }
    verify(VECTOR_SECRET, sent, VECTOR_BODY, now=VECTOR_TIMESTAMP + 10)
    # and so does the docs' snippet, at that moment
    lowered = {k.lower(): v for k, v in sent.items()}
    verifier = docs_verifier()
    verifier.__globals__["time"] = SimpleNamespace(time=lambda: VECTOR_TIMESTAMP + 10)
    verifier(VECTOR_SECRET, lowered, VECTOR_BODY)


def test_headers_round_trip() -> None:
    stamp = int(time.time())
    sent = headers(SECRET, "msg_abc", stamp, BODY)
    assert set(sent) == {"webhook-id", "webhook-timestamp", "webhook-signature", "content-type"}
    assert sent["webhook-id"] == "msg_abc"
    assert sent["webhook-timestamp"] == str(stamp)
    assert sent["content-type"] == "application/json"
    assert re.fullmatch(r"v1,[A-Za-z0-9+/]{43}=", sent["webhook-signature"])
    verify(SECRET, sent, BODY)
    verify(parse_secret(SECRET), sent, BODY)
    docs_verifier()(SECRET, sent, BODY)


@pytest.mark.parametrize("part", ["body", "id", "timestamp"])
def test_a_tampered_request_fails(part: str) -> None:
    stamp = int(time.time())
    sent, body = headers(SECRET, "msg_abc", stamp, BODY), BODY
    if part == "body":
        body = BODY.replace(b"succeeded", b"failed")
    elif part == "id":
        sent["webhook-id"] = "msg_abd"
    else:
        sent["webhook-timestamp"] = str(stamp - 1)
    with pytest.raises(SignatureMismatchError):
        verify(SECRET, sent, body)
    with pytest.raises(ValueError):
        docs_verifier()(SECRET, sent, body)


@pytest.mark.parametrize("age_s", [301, -301, 100_000])
def test_a_timestamp_outside_the_tolerance_fails(age_s: int) -> None:
    stamp = int(time.time()) - age_s
    sent = headers(SECRET, "msg_abc", stamp, BODY)  # correctly signed, but stale or early
    with pytest.raises(TimestampOutOfToleranceError):
        verify(SECRET, sent, BODY)
    verify(SECRET, sent, BODY, tolerance_s=abs(age_s) + 5)
    with pytest.raises(ValueError, match="too old or too new"):
        docs_verifier()(SECRET, sent, BODY)


def test_a_wrong_secret_fails() -> None:
    sent = headers(SECRET, "msg_abc", int(time.time()), BODY)
    with pytest.raises(SignatureMismatchError):
        verify(new_secret(), sent, BODY)


@pytest.mark.parametrize(
    "change",
    [
        {"webhook-id": None},
        {"webhook-timestamp": None},
        {"webhook-signature": None},
        {"webhook-signature": ""},
        {"webhook-timestamp": "hello"},
        {"webhook-timestamp": "1.5e9"},
        {"webhook-timestamp": "-5"},
    ],
)
def test_missing_or_malformed_headers_fail(change: dict[str, str | None]) -> None:
    sent: dict[str, str] = headers(SECRET, "msg_abc", int(time.time()), BODY)
    for key, value in change.items():
        if value is None:
            del sent[key]
        else:
            sent[key] = value
    with pytest.raises(MissingHeaderError):
        verify(SECRET, sent, BODY)


def test_several_signatures_any_valid_one_passes() -> None:
    stamp = int(time.time())
    old, new = new_secret(), new_secret()
    good = sign(new, "msg_abc", stamp, BODY)
    junk = [
        "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
        "v2," + good.removeprefix("v1,"),  # the right bytes under an unknown version
        "v1a,hnO3f9T8Ytu9HwrXslvumlUpqtNVqkhqw/enGzPCXe5BdqzCInXqYXFymVJaA7AZdpXwVLPo3mNl8EM+m7TBAg==",
        "v1,not*base64",
        "nocomma",
    ]
    sent = {"webhook-id": "msg_abc", "webhook-timestamp": str(stamp)}
    verify(new, {**sent, "webhook-signature": " ".join([*junk, good])}, BODY)
    with pytest.raises(SignatureMismatchError):
        verify(new, {**sent, "webhook-signature": " ".join(junk)}, BODY)

    rotated = headers([old, new], "msg_abc", stamp, BODY)  # a sender in the middle of a rotation
    assert len(rotated["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        verify(secret, rotated, BODY)
        docs_verifier()(secret, rotated, BODY)
    verify([new_secret(), old], headers(old, "msg_abc", stamp, BODY), BODY)  # a receiver's list


def test_sign_refuses_an_id_that_could_shift_the_signed_fields() -> None:
    for bad in ("", "msg.1", "msg\r\nx-evil: 1"):
        with pytest.raises(ValueError, match="webhook id"):
            sign(SECRET, bad, 1, BODY)


# --- secrets ------------------------------------------------------------------------------------


def test_each_api_key_gets_a_secret_of_its_own_derived_from_the_services() -> None:
    service = parse_secret(new_secret())
    alice, bob = service.for_key("alice"), service.for_key("bob")
    assert alice.reveal() == service.for_key("alice").reveal()  # stateless: derived again
    assert len({service.reveal(), alice.reveal(), bob.reveal()}) == 3
    assert parse_secret(new_secret()).for_key("alice").reveal() != alice.reveal()
    signed = headers(alice, "msg_1", int(time.time()), b"{}")
    verify(alice.reveal(), signed, b"{}")
    for other in (bob, service):
        with pytest.raises(SignatureMismatchError):
            verify(other, signed, b"{}")
    assert "alice" not in repr(alice) and alice.reveal() not in repr(alice)
    with pytest.raises(ValueError, match="fingerprint"):
        service.for_key("")


def test_an_events_id_is_fixed_by_the_event_and_signable() -> None:
    msg_id = event_msg_id("job_3f2a", "job.succeeded")
    assert msg_id == "msg_job_3f2a_job_succeeded" == event_msg_id("job_3f2a", "job.succeeded")
    assert event_msg_id("job_3f2a", "job.failed") != msg_id
    sign(new_secret(), msg_id, 1, b"{}")  # a valid id for the signature
    with pytest.raises(ValueError, match="subject"):
        event_msg_id("job.3f2a", "job.failed")


def test_secrets_parse_and_never_show_their_key() -> None:
    text = new_secret()
    assert text.startswith("whsec_")
    assert len(base64.b64decode(text.removeprefix("whsec_"))) == 32
    secret = parse_secret(text)
    key_part = text.removeprefix("whsec_")
    for shown in (repr(secret), str(secret), f"{secret}", f"{secret!r}", repr([secret])):
        assert key_part not in shown
        assert "whsec_…" in shown
    assert secret.reveal() == text
    assert parse_secret(text.rstrip("=")).reveal() == text  # unpadded base64 is accepted
    assert pickle.loads(pickle.dumps(secret)).reveal() == text


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "starts with 'whsec_'"),
        ("whsec_not base64!!", "standard base64"),
        ("whsec_" + base64.b64encode(b"x" * 16).decode(), "24 to 64 bytes, not 16"),
        ("whsec_" + base64.b64encode(b"x" * 65).decode(), "24 to 64 bytes, not 65"),
        ("", "starts with 'whsec_'"),
    ],
)
def test_a_malformed_secret_is_refused_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(WebhookSecretError, match=re.escape(reason)) as caught:
        parse_secret(text)
    assert isinstance(caught.value, ValueError)


# --- the event ----------------------------------------------------------------------------------


def test_the_event_body_is_minified_json_with_type_timestamp_and_data() -> None:
    at = datetime(2022, 11, 3, 20, 26, 10, 344522, tzinfo=UTC)
    body = event("job.failed", {"id": "job_1", "error": {"code": "x"}}, at=at)
    assert body == (
        b'{"type":"job.failed","timestamp":"2022-11-03T20:26:10.344522Z",'
        b'"data":{"id":"job_1","error":{"code":"x"}}}'
    )
    with pytest.raises(ValueError, match="unknown webhook event"):
        event("job.started", {})  # type: ignore[arg-type]


# --- delivery -----------------------------------------------------------------------------------


class FakeTime:
    """A wall clock that starts now and moves only when the delivery sleeps."""

    def __init__(self) -> None:
        self.now = time.time()
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class Receiver:
    """A webhook receiver on 127.0.0.1 answering ``statuses`` in turn (then ``default``); each
    request is checked with the docs' snippet and recorded."""

    def __init__(self, statuses: list[int] | None = None, *, default: int = 200, hang_s: float = 0):
        self.statuses, self.default, self.hang_s = list(statuses or []), default, hang_s
        self.requests: list[SimpleNamespace] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.02,))

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def url(self, path: str = "/hook") -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}{path}"

    def answered(self, status: int) -> int:
        return sum(1 for r in self.requests if r.status == status)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a sender that timed out and hung up is part of the tests


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    verify_webhook = docs_verifier()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            try:
                verify_webhook(SECRET, self.headers, body)
                verified = True
            except (KeyError, ValueError):
                verified = False
            with receiver._lock:
                status = receiver.statuses.pop(0) if receiver.statuses else receiver.default
                receiver.requests.append(
                    SimpleNamespace(
                        path=self.path,
                        headers={k.lower(): v for k, v in self.headers.items()},
                        body=body,
                        verified=verified,
                        status=status,
                    )
                )
            if receiver.hang_s:
                receiver._stop.wait(receiver.hang_s)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@asynccontextmanager
async def httpx_sender() -> AsyncIterator[Send]:
    async with httpx.AsyncClient(timeout=5, follow_redirects=False) as client:

        async def send(url: str, body: bytes, headers: Mapping[str, str]) -> int:
            return (await client.post(url, content=body, headers=dict(headers))).status_code

        yield send


async def deliver_via_httpx(url: str, fake: FakeTime, **options: Any) -> Delivery:
    async with httpx_sender() as send:
        return await deliver(
            url,
            "job.succeeded",
            {"id": "job_1", "status": "succeeded"},
            SECRET,
            send,
            sleep=fake.sleep,
            clock=fake.clock,
            jitter=0.0,
            **options,
        )


def test_a_receiver_that_fails_once_gets_one_delivery_after_two_attempts() -> None:
    fake = FakeTime()
    with Receiver([500]) as receiver:
        record = run(deliver_via_httpx(receiver.url(), fake))
    assert record.delivered
    assert [a.status for a in record.attempts] == [500, 200]
    assert [a.error for a in record.attempts] == [None, None]
    assert record.next_attempt_at is None
    assert receiver.answered(200) == 1 and len(receiver.requests) == 2
    assert all(r.verified for r in receiver.requests)
    ids = {r.headers["webhook-id"] for r in receiver.requests}
    assert ids == {record.id} and record.id.startswith("msg_")
    first, second = receiver.requests
    assert first.body == second.body  # the event's own timestamp does not change
    assert int(second.headers["webhook-timestamp"]) == int(first.headers["webhook-timestamp"]) + 1
    assert first.headers["webhook-signature"] != second.headers["webhook-signature"]
    assert json.loads(first.body)["type"] == "job.succeeded"
    assert first.headers["content-type"] == "application/json"
    assert fake.sleeps == [1.0]
    assert Delivery.model_validate_json(record.model_dump_json()) == record


def test_a_receiver_that_always_fails_gets_every_attempt_and_no_delivery() -> None:
    fake = FakeTime()
    with Receiver(default=503) as receiver:
        record = run(deliver_via_httpx(receiver.url(), fake, attempts=4))
    assert not record.delivered and record.next_attempt_at is None
    assert [a.status for a in record.attempts] == [503] * 4
    assert len(receiver.requests) == 4 and all(r.verified for r in receiver.requests)
    assert len({r.headers["webhook-id"] for r in receiver.requests}) == 1
    assert fake.sleeps == [1.0, 2.0, 4.0]  # no wait after the last attempt


def test_a_redirect_is_a_failure_and_410_gone_stops_at_once() -> None:
    with Receiver([302, 410]) as receiver:
        record = run(deliver_via_httpx(receiver.url(), FakeTime()))
    assert [a.status for a in record.attempts] == [302, 410]
    assert not record.delivered and len(receiver.requests) == 2


def test_an_error_the_caller_names_stops_at_once() -> None:
    class Refused(ValueError):  # as urlpolicy.UrlRefusedError: retrying cannot help
        pass

    async def refuse(url: str, body: bytes, headers: Mapping[str, str]) -> int:
        raise Refused("private address")

    fake = FakeTime()
    record = run(
        deliver(
            "http://10.0.0.1/",
            "job.failed",
            {},
            SECRET,
            refuse,
            give_up_on=(Refused,),
            sleep=fake.sleep,
            clock=fake.clock,
        )
    )
    assert [a.error for a in record.attempts] == ["Refused: private address"]
    assert not record.delivered and record.next_attempt_at is None and fake.sleeps == []


def test_timeouts_and_refused_connections_are_recorded_and_retried() -> None:
    with Receiver(hang_s=5) as receiver:
        started = time.perf_counter()
        record = run(deliver_via_httpx(receiver.url(), FakeTime(), attempts=2, timeout_s=0.2))
        assert time.perf_counter() - started < 2
    assert [a.error for a in record.attempts] == ["timed out after 0.2 s"] * 2
    assert all(a.status is None and a.duration_s >= 0.2 for a in record.attempts)

    closed = receiver.url()  # nothing listens there any more
    record = run(deliver_via_httpx(closed, FakeTime(), attempts=3))
    assert not record.delivered and len(record.attempts) == 3
    assert all(a.error and a.error.startswith("ConnectError") for a in record.attempts)


def test_the_schedule_backs_off_exponentially_up_to_the_cap_with_bounded_jitter() -> None:
    async def refused(url: str, body: bytes, headers: Mapping[str, str]) -> int:
        raise ConnectionRefusedError("no")

    fake = FakeTime()
    options: dict[str, Any] = {"attempts": 6, "backoff_s": 0.5, "factor": 3, "max_backoff_s": 10}
    run(
        deliver(
            "http://127.0.0.1:9/",
            "job.failed",
            {},
            SECRET,
            refused,
            jitter=0,
            sleep=fake.sleep,
            clock=fake.clock,
            **options,
        )
    )
    assert fake.sleeps == [0.5, 1.5, 4.5, 10, 10]
    assert backoff(2, 1, 2, 60, jitter=0.1, rng=lambda: 0.0) == pytest.approx(1.8)
    assert backoff(2, 1, 2, 60, jitter=0.1, rng=lambda: 1.0) == pytest.approx(2.2)
    assert backoff(9, 1, 2, 60, jitter=0.1, rng=lambda: 1.0) == 60  # never over the cap
    with pytest.raises(ValueError, match="attempts must be at least 1"):
        run(deliver("http://127.0.0.1:9/", "job.failed", {}, SECRET, refused, attempts=0))


def test_on_attempt_sees_the_record_with_its_next_attempt_while_a_retry_waits() -> None:
    fake, seen = FakeTime(), []

    async def save(record: Delivery) -> None:
        seen.append((len(record.attempts), record.delivered, record.next_attempt_at))

    first_try = fake.now
    with Receiver([500]) as receiver:
        run(deliver_via_httpx(receiver.url(), fake, on_attempt=save))
    retry_at = datetime.fromtimestamp(first_try + 1.0, UTC)
    assert seen == [(1, False, retry_at), (2, True, None)]


def test_a_blocking_sender_runs_in_a_thread() -> None:
    with Receiver() as receiver, httpx.Client(timeout=5) as client:

        def post(url: str, body: bytes, headers: Mapping[str, str]) -> int:
            return client.post(url, content=body, headers=dict(headers)).status_code

        record = run(deliver(receiver.url(), "job.succeeded", {}, SECRET, in_thread(post)))
    assert record.delivered and receiver.requests[0].verified


def test_the_secret_never_reaches_logs_records_or_reprs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    key_part = SECRET.removeprefix("whsec_")
    with Receiver([500, 500]) as receiver:
        url = receiver.url("/hook?token=tok_query_secret")
        record = run(deliver_via_httpx(url, FakeTime()))
    assert record.delivered and record.url == url  # the record keeps the URL as given
    assert receiver.requests[0].path == "/hook?token=tok_query_secret"
    assert "attempt 1/5 failed (status 500); retrying in 1.0 s" in caplog.text
    assert "delivered (attempt 3)" in caplog.text
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name == "models.webhook_delivery")
    assert "tok_query_secret" not in ours  # our log lines drop the query string
    for text in (caplog.text, repr(record), record.model_dump_json(), repr(parse_secret(SECRET))):
        assert SECRET not in text and key_part not in text
    with pytest.raises(WebhookSecretError) as caught:
        WebhookSecret(b"short")
    assert "short" not in str(caught.value)
