"""Webhooks in the Standard Webhooks format (https://www.standardwebhooks.com, spec 1.0.0).

A job that finishes POSTs ``{"type", "timestamp", "data"}`` to the caller's URL with three headers:
``webhook-id`` (the same on every retry, for dedupe), ``webhook-timestamp`` (Unix seconds of the
attempt) and ``webhook-signature``: ``v1,`` + base64 HMAC-SHA256 over ``id.timestamp.body``, keyed
with the secret ``whsec_<base64 key>``. ``deliver`` retries with exponential backoff and returns a
``Delivery`` record for the job; it never raises for the receiver's failures.

No HTTP client here: the POST is injected (``models.urlguard.apost_json`` with its policy bound,
or ``in_thread(post_json)``). The secret never reaches a log line, a repr or a record.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import inspect
import json
import logging
import math
import random
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

from pydantic import BaseModel, Field

from models.errors import SuperResError

log = logging.getLogger(__name__)

EventType = Literal["job.succeeded", "job.failed"]
EVENT_TYPES: tuple[str, ...] = get_args(EventType)
PREFIX = "whsec_"
MIN_KEY_BYTES, MAX_KEY_BYTES = 24, 64  # the spec: at least 192 bits, at most 512
_TIMESTAMP = re.compile(r"[0-9]{1,12}")

# (url, body, headers) -> HTTP status. The body must go out byte for byte: it is what is signed.
Send = Callable[[str, bytes, Mapping[str, str]], Awaitable[int]]
SyncSend = Callable[[str, bytes, Mapping[str, str]], int]


class WebhookError(SuperResError):
    """Base class of the webhook errors."""


class WebhookSecretError(WebhookError, ValueError):
    """A configured signing secret is not ``whsec_`` + base64 of 24 to 64 bytes."""


class WebhookVerificationError(WebhookError):
    """A received webhook is not authentic (or not fresh): refuse it."""


class MissingHeaderError(WebhookVerificationError):
    """``webhook-id``, ``webhook-timestamp`` or ``webhook-signature`` is absent or malformed."""


class SignatureMismatchError(WebhookVerificationError):
    """No ``v1`` signature in the header matches the body, id and timestamp under the secret."""


class TimestampOutOfToleranceError(WebhookVerificationError):
    """``webhook-timestamp`` is further from now than the tolerance (a replay, or a bad clock)."""


# --- secrets ------------------------------------------------------------------------------------


class WebhookSecret:
    """A parsed signing secret. Its repr and str never show the key; ``reveal()`` does."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
            raise WebhookSecretError(
                f"a webhook secret must hold {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes, "
                f"not {len(key)}; make one with models.webhooks.new_secret()"
            )
        self._key = bytes(key)

    @classmethod
    def parse(cls, text: str) -> WebhookSecret:
        text = text.strip()
        if not text.startswith(PREFIX):
            raise WebhookSecretError(
                f"a webhook secret starts with {PREFIX!r} followed by base64 "
                "(make one with models.webhooks.new_secret())"
            )
        encoded = text[len(PREFIX) :]
        try:
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise WebhookSecretError(
                f"a webhook secret is {PREFIX!r} followed by standard base64; this one is not"
            ) from None
        return cls(key)

    def reveal(self) -> str:
        """The ``whsec_`` form, to show its owner once or to write to a secret store."""
        return PREFIX + base64.b64encode(self._key).decode()

    def digest(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()

    def __repr__(self) -> str:
        return f"WebhookSecret({PREFIX}…, {len(self._key)} bytes)"

    __str__ = __repr__

    def __reduce__(self) -> tuple[Any, ...]:  # pickles (Ray) without going through repr
        return (WebhookSecret, (self._key,))


SecretLike = WebhookSecret | str


def new_secret(nbytes: int = 32) -> str:
    """A fresh random secret in the spec's format, ``whsec_`` + base64."""
    return WebhookSecret(secrets.token_bytes(nbytes)).reveal()


def parse_secret(secret: SecretLike) -> WebhookSecret:
    """``secret`` as a ``WebhookSecret``; ``WebhookSecretError`` with a reason if it is not one."""
    return secret if isinstance(secret, WebhookSecret) else WebhookSecret.parse(secret)


def _secrets(secret: SecretLike | Sequence[SecretLike]) -> list[WebhookSecret]:
    many = [secret] if isinstance(secret, WebhookSecret | str) else list(secret)
    if not many:
        raise WebhookSecretError("at least one webhook secret is needed")
    return [parse_secret(s) for s in many]


# --- signing and verifying ----------------------------------------------------------------------


def new_msg_id() -> str:
    return f"msg_{secrets.token_hex(16)}"


def sign(secret: SecretLike, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,`` + base64 HMAC-SHA256 of ``{msg_id}.{timestamp}.{body}``."""
    if not msg_id or "." in msg_id or not msg_id.isprintable():
        raise ValueError(f"a webhook id must be non-empty, printable and without '.': {msg_id!r}")
    if timestamp < 0:
        raise ValueError(f"a webhook timestamp is Unix seconds, not {timestamp}")
    payload = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(parse_secret(secret).digest(payload)).decode()


def headers(
    secret: SecretLike | Sequence[SecretLike], msg_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """The request headers of one attempt; several secrets (a rotation) give several signatures."""
    signatures = " ".join(sign(s, msg_id, timestamp, body) for s in _secrets(secret))
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signatures,
        "content-type": "application/json",
    }


def verify(
    secret: SecretLike | Sequence[SecretLike],
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance_s: float = 300,
    now: float | None = None,
) -> None:
    """Raise a ``WebhookVerificationError`` unless one ``v1`` signature matches under one of the
    secrets and the timestamp is within ``tolerance_s`` of ``now`` (default: the clock)."""
    keys = _secrets(secret)
    lowered = {k.lower(): v for k, v in headers.items()}
    msg_id = lowered.get("webhook-id", "")
    stamp = lowered.get("webhook-timestamp", "")
    signatures = lowered.get("webhook-signature", "")
    if not (msg_id and stamp and signatures):
        raise MissingHeaderError("webhook-id, webhook-timestamp and webhook-signature are needed")
    if not _TIMESTAMP.fullmatch(stamp):
        raise MissingHeaderError(f"webhook-timestamp is not Unix seconds: {stamp[:20]!r}")
    timestamp = int(stamp)
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        raise TimestampOutOfToleranceError(
            f"webhook-timestamp {timestamp} is more than {tolerance_s:g} s from now"
        )
    payload = f"{msg_id}.{timestamp}.".encode() + body
    expected = [key.digest(payload) for key in keys]
    for token in signatures.split():
        version, _, encoded = token.partition(",")
        if version != "v1":
            continue
        try:
            given = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        # compare_digest against every key, no early exit between keys
        if sum(hmac.compare_digest(given, e) for e in expected):
            return
    raise SignatureMismatchError("no webhook signature matches")


def event(type: EventType, data: Mapping[str, Any], *, at: datetime | None = None) -> bytes:
    """The body: minified JSON ``{"type", "timestamp" (ISO 8601, UTC), "data"}``."""
    if type not in EVENT_TYPES:
        raise ValueError(f"unknown webhook event {type!r}; events: {', '.join(EVENT_TYPES)}")
    when = (at or datetime.now(UTC)).astimezone(UTC)
    stamp = when.isoformat(timespec="microseconds").replace("+00:00", "Z")
    body = {"type": type, "timestamp": stamp, "data": dict(data)}
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


# --- delivery -----------------------------------------------------------------------------------


class Attempt(BaseModel):
    at: datetime
    status: int | None = None  # the receiver's answer, or None if it gave none
    error: str | None = None  # a timeout or connection error, when there was no answer
    duration_s: float


class Delivery(BaseModel):
    """One event to one URL, however many attempts it took: what a job records."""

    id: str  # the webhook-id, the same on every attempt
    event: EventType
    url: str
    attempts: list[Attempt] = Field(default_factory=list)
    delivered: bool = False
    next_attempt_at: datetime | None = None  # set while a retry is scheduled


def in_thread(post: SyncSend) -> Send:
    """A blocking sender (``urlguard.post_json`` with its policy bound) run off the event loop."""

    async def send(url: str, body: bytes, headers: Mapping[str, str]) -> int:
        return await asyncio.to_thread(post, url, body, headers)

    return send


def backoff(
    attempt: int,
    backoff_s: float = 1.0,
    factor: float = 2.0,
    max_backoff_s: float = 60.0,
    *,
    jitter: float = 0.0,
    rng: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based): exponential, capped,
    then spread by ± ``jitter`` (a fraction) so that retries of many jobs do not arrive together."""
    spread = 1 + jitter * (2 * rng() - 1)
    return min(max_backoff_s, backoff_s * factor ** (attempt - 1) * spread)


async def deliver(
    url: str,
    event_type: EventType,
    data: Mapping[str, Any],
    secret: SecretLike | Sequence[SecretLike],
    send: Send,
    *,
    attempts: int = 5,
    backoff_s: float = 1.0,
    factor: float = 2.0,
    max_backoff_s: float = 60.0,
    jitter: float = 0.1,
    timeout_s: float | None = 30.0,
    msg_id: str | None = None,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    clock: Callable[[], float] = time.time,
    rng: Callable[[], float] = random.random,
    on_attempt: Callable[[Delivery], Any] | None = None,
    give_up_on: tuple[type[Exception], ...] = (),
) -> Delivery:
    """POST the event until a 2xx, ``attempts`` tries at most, and say how it went.

    Every attempt carries the same ``webhook-id`` and body, a fresh timestamp and signature.
    Non-2xx answers (3xx included: redirects are not followed), timeouts and connection errors are
    retried after ``backoff_s * factor**(n-1)`` seconds (at most ``max_backoff_s``, ± ``jitter``
    as a fraction); a 410 Gone, or an error of a ``give_up_on`` class (a URL the sender refuses,
    ``urlguard.UrlRefusedError``), stops at once. ``on_attempt`` (sync or async) sees the record after
    each attempt, with ``next_attempt_at`` set while a retry waits, so a job can save it.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, not {attempts}")
    if backoff_s < 0 or max_backoff_s < 0 or factor < 1 or not 0 <= jitter <= 1:
        raise ValueError("backoff_s and max_backoff_s must be >= 0, factor >= 1, jitter in [0, 1]")
    keys = _secrets(secret)
    body = event(event_type, data, at=datetime.fromtimestamp(clock(), UTC))
    record = Delivery(id=msg_id or new_msg_id(), event=event_type, url=url)
    where = _redacted(url)
    for number in range(1, attempts + 1):
        started, t0 = clock(), time.perf_counter()
        signed = headers(keys, record.id, math.floor(started), body)
        status, error, fatal = await _post(send, url, body, signed, timeout_s, give_up_on)
        took = round(time.perf_counter() - t0, 6)
        at = datetime.fromtimestamp(started, UTC)
        record.attempts.append(Attempt(at=at, status=status, error=error, duration_s=took))
        record.delivered = status is not None and 200 <= status < 300
        last = record.delivered or fatal or status == 410 or number == attempts
        delay = 0.0
        if not last:
            delay = backoff(number, backoff_s, factor, max_backoff_s, jitter=jitter, rng=rng)
        record.next_attempt_at = None if last else datetime.fromtimestamp(clock() + delay, UTC)
        if record.delivered:
            log.info(
                "webhook %s %s to %s delivered (attempt %d)", record.id, event_type, where, number
            )
        else:
            outcome = f"status {status}" if error is None else error.replace(url, where)
            then = "giving up" if last else f"retrying in {delay:.1f} s"
            log.warning(
                "webhook %s %s to %s: attempt %d/%d failed (%s); %s",
                record.id,
                event_type,
                where,
                number,
                attempts,
                outcome,
                then,
            )
        if on_attempt is not None and inspect.isawaitable(saved := on_attempt(record)):
            await saved
        if last:
            break
        await sleep(delay)
    return record


async def _post(
    send: Send,
    url: str,
    body: bytes,
    signed: Mapping[str, str],
    timeout_s: float | None,
    give_up_on: tuple[type[Exception], ...],
) -> tuple[int | None, str | None, bool]:
    """(status, None, False) if the receiver answered, else (None, why not, whether to stop)."""
    deadline = asyncio.timeout(timeout_s)
    try:
        async with deadline:
            return int(await send(url, body, signed)), None, False
    except Exception as exc:  # the receiver's or the network's failure: recorded, then retried
        if deadline.expired():
            return None, f"timed out after {timeout_s:g} s", False
        why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return None, why[:300], isinstance(exc, give_up_on)


def _redacted(url: str) -> str:
    """The URL for a log line: no user info, query or fragment (tokens often hide there)."""
    parts = urlsplit(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2], query="", fragment="").geturl()
