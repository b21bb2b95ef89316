"""Per-key quotas shared by every Ingress replica: a request rate and a cap on concurrent work.

``QuotaBook`` is the whole logic, a plain object with the clock passed in: a token bucket per key
(``rate`` tokens a second, holding at most ``burst``) and a set of leases per key (at most
``concurrency`` at a time). ``Quotas`` is the one-replica deployment that holds the book, so the
counts are the same whichever Ingress replica a request reaches. ``hold_quota`` is what a caller
wraps a request in: it acquires a lease, raises ``QuotaExceeded`` when refused, and releases.

A lease that is never released (its Ingress replica died mid-request) expires after ``lease_s`` and
is reclaimed on the key's next acquire, so a crash cannot use up a key's concurrency for good.
Counts live in one process: a restart of the ``Quotas`` replica starts every key afresh.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve.handle import DeploymentHandle

log = logging.getLogger("ray.serve")

DEFAULT_LEASE_S = 600.0  # longer than any request should take
CONCURRENCY_RETRY_S = 1


class QuotaLimits(BaseModel):
    """What one key may do: ``rate`` requests a second on average, ``burst`` at once after a
    pause, and ``concurrency`` requests in progress at a time."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rate: float = Field(default=1.0, gt=0, le=1_000_000)
    burst: int = Field(default=5, ge=1, le=1_000_000)
    concurrency: int = Field(default=2, ge=1, le=100_000)


@dataclass(frozen=True)
class Lease:
    id: str
    key: str
    expires_at: float


@dataclass(frozen=True)
class Refusal:
    reason: Literal["rate", "concurrency"]
    retry_after_s: int  # whole seconds, at least 1: the value of a Retry-After header
    message: str


class QuotaExceeded(Exception):
    """A request over its key's quota (HTTP 429 with ``Retry-After: retry_after_s``)."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal
        self.reason = refusal.reason
        self.retry_after_s = refusal.retry_after_s

    def __reduce__(self) -> tuple[type[QuotaExceeded], tuple[Refusal]]:
        return type(self), (self.refusal,)


@dataclass
class _Bucket:
    tokens: float
    updated: float
    leases: dict[str, float] = field(default_factory=dict)  # lease id -> expires_at


class QuotaBook:
    """Token buckets and concurrency leases per key. Not thread-safe: one event loop calls it."""

    def __init__(self, lease_s: float = DEFAULT_LEASE_S) -> None:
        if lease_s <= 0:
            raise ValueError("lease_s must be greater than 0")
        self._lease_s = lease_s
        self._buckets: dict[str, _Bucket] = {}
        self._lease_keys: dict[str, str] = {}  # lease id -> key

    def acquire(self, key: str, limits: QuotaLimits, now: float) -> Lease | Refusal:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(tokens=float(limits.burst), updated=now)
        self._reclaim(key, bucket, now)
        elapsed = max(0.0, now - bucket.updated)
        bucket.tokens = min(float(limits.burst), bucket.tokens + elapsed * limits.rate)
        bucket.updated = now
        if len(bucket.leases) >= limits.concurrency:
            return Refusal(
                "concurrency",
                CONCURRENCY_RETRY_S,
                f"key {key!r} is at its limit of {limits.concurrency} concurrent requests",
            )
        if bucket.tokens < 1.0:
            wait = max(1, math.ceil((1.0 - bucket.tokens) / limits.rate))
            return Refusal(
                "rate",
                wait,
                f"key {key!r} is over its rate of {limits.rate:g} requests/s "
                f"(burst {limits.burst}); retry in {wait} s",
            )
        bucket.tokens -= 1.0
        lease = Lease(id=secrets.token_hex(12), key=key, expires_at=now + self._lease_s)
        bucket.leases[lease.id] = lease.expires_at
        self._lease_keys[lease.id] = key
        return lease

    def release(self, lease_id: str) -> bool:
        """Ends a lease; False when it was unknown (already released, or expired and reclaimed)."""
        key = self._lease_keys.pop(lease_id, None)
        if key is None:
            return False
        del self._buckets[key].leases[lease_id]
        return True

    def in_progress(self, key: str) -> int:
        bucket = self._buckets.get(key)
        return 0 if bucket is None else len(bucket.leases)

    def _reclaim(self, key: str, bucket: _Bucket, now: float) -> None:
        expired = [lease_id for lease_id, until in bucket.leases.items() if until <= now]
        for lease_id in expired:
            del bucket.leases[lease_id]
            del self._lease_keys[lease_id]
        if expired:
            log.warning("reclaimed %d expired lease(s) of key %r", len(expired), key)


# One replica: the counts must be the same for every Ingress replica. Never autoscale it.
@serve.deployment(
    name="Quotas",
    num_replicas=1,
    max_ongoing_requests=1000,
    max_queued_requests=1000,
    ray_actor_options={"num_cpus": 0},
)
class Quotas:
    def __init__(self, lease_s: float = DEFAULT_LEASE_S) -> None:
        self._book = QuotaBook(lease_s)

    # async, with no await inside: each call runs whole on the replica's event loop, so calls
    # never interleave and the book needs no lock.
    async def acquire(self, key: str, limits: QuotaLimits) -> Lease | Refusal:
        return self._book.acquire(key, limits, time.monotonic())

    async def release(self, lease_id: str) -> bool:
        return self._book.release(lease_id)


@asynccontextmanager
async def hold_quota(
    quotas: DeploymentHandle, key: str, limits: QuotaLimits
) -> AsyncIterator[Lease]:
    """``async with hold_quota(handle, name, limits):`` around one request's work. Raises
    ``QuotaExceeded`` when refused; releases the lease however the block ends."""
    outcome = await quotas.acquire.remote(key, limits)
    if isinstance(outcome, Refusal):
        raise QuotaExceeded(outcome)
    try:
        yield outcome
    finally:
        try:
            await quotas.release.remote(outcome.id)
        except Exception as exc:  # the lease expires on its own; the answer must not fail
            log.warning("could not release quota lease of key %r: %s", key, exc)
