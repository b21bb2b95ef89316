"""Sending a webhook (``superres_client.webhooks`` is its format): retries with exponential backoff and
jitter, and a ``Delivery`` record of every attempt for the job; it never raises for the receiver's
failures.

No HTTP client here: the POST is injected (``models.urlguard.apost_json`` with its policy bound,
or ``in_thread(post_json)``).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, Field

from superres_client.webhooks import EventType, SecretLike, event, headers, new_msg_id, secret_list

log = logging.getLogger(__name__)

# (url, body, headers) -> HTTP status. The body must go out byte for byte: it is what is signed.
Send = Callable[[str, bytes, Mapping[str, str]], Awaitable[int]]
SyncSend = Callable[[str, bytes, Mapping[str, str]], int]


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
    ``urlpolicy.UrlRefusedError``), stops at once. ``on_attempt`` (sync or async) sees the record after
    each attempt, with ``next_attempt_at`` set while a retry waits, so a job can save it.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, not {attempts}")
    if backoff_s < 0 or max_backoff_s < 0 or factor < 1 or not 0 <= jitter <= 1:
        raise ValueError("backoff_s and max_backoff_s must be >= 0, factor >= 1, jitter in [0, 1]")
    keys = secret_list(secret)
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
