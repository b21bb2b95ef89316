"""Webhooks in the Standard Webhooks format (https://www.standardwebhooks.com, spec 1.0.0).

A job that finishes POSTs ``{"type", "timestamp", "data"}`` to the caller's URL with three headers:
``webhook-id`` (the same on every retry, for dedupe), ``webhook-timestamp`` (Unix seconds of the
attempt) and ``webhook-signature``: ``v1,`` + base64 HMAC-SHA256 over ``id.timestamp.body``, keyed
with the secret ``whsec_<base64 key>``.

This module is the format: secrets, the body, signing and verifying. The service signs with it
(``models.webhook_delivery`` sends); receivers verify with it, which is why it lives in the SDK
(standard library only)::

    from superres_client.webhooks import verify
    verify(secret, request.headers, raw_body)  # raises WebhookVerificationError

The secret never reaches a log line, a repr or a record.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, get_args

EventType = Literal["job.succeeded", "job.failed"]
EVENT_TYPES: tuple[str, ...] = get_args(EventType)
PREFIX = "whsec_"
MIN_KEY_BYTES, MAX_KEY_BYTES = 24, 64  # the spec: at least 192 bits, at most 512
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_PER_KEY = b"superres webhook secret of API key\0"  # domain separation from the signatures


class WebhookError(Exception):
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
                f"not {len(key)}; make one with superres_client.webhooks.new_secret()"
            )
        self._key = bytes(key)

    @classmethod
    def parse(cls, text: str) -> WebhookSecret:
        text = text.strip()
        if not text.startswith(PREFIX):
            raise WebhookSecretError(
                f"a webhook secret starts with {PREFIX!r} followed by base64 "
                "(make one with superres_client.webhooks.new_secret())"
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

    def for_key(self, key_id: str) -> WebhookSecret:
        """The secret of the webhooks of jobs made with one API key (``key_id``: its fingerprint,
        new with every key): an HMAC of it under this (the service's) secret. Each key's receivers
        get a secret of their own, so they cannot sign for another key's; a key created anew gets
        a new one; rotating the service's secret rotates every key's. Nothing is stored per key."""
        if not key_id:
            raise ValueError("an API key's fingerprint is needed")
        return WebhookSecret(self.digest(_PER_KEY + key_id.encode()))

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


def secret_list(secret: SecretLike | Sequence[SecretLike]) -> list[WebhookSecret]:
    """One secret or several (a rotation: each signs) as ``WebhookSecret``s."""
    many = [secret] if isinstance(secret, WebhookSecret | str) else list(secret)
    if not many:
        raise WebhookSecretError("at least one webhook secret is needed")
    return [parse_secret(s) for s in many]


# --- signing and verifying ----------------------------------------------------------------------


def new_msg_id() -> str:
    return f"msg_{secrets.token_hex(16)}"


def event_msg_id(subject: str, type: EventType) -> str:
    """A ``webhook-id`` fixed by what happened (``subject``'s ``type`` event), not by who sends
    it: if the same event is sent twice (a job run by two runners during an upgrade), receivers
    see one id and drop the repeat as they drop a retry."""
    msg_id = f"msg_{subject}_{type.replace('.', '_')}"
    if "." in msg_id or not msg_id.isprintable():
        raise ValueError(f"a webhook id subject must be printable and without '.': {subject!r}")
    return msg_id


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
    signatures = " ".join(sign(s, msg_id, timestamp, body) for s in secret_list(secret))
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
    keys = secret_list(secret)
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
