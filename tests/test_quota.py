"""Per-key quotas: the token bucket, Retry-After values, the concurrency cap and lease expiry, with
the clock passed in; ``hold_quota`` against a stand-in handle. No Ray is started."""

from __future__ import annotations

import asyncio
import logging
import pickle
from typing import Any

import pytest
from pydantic import ValidationError

from deployments.quota import (
    CONCURRENCY_RETRY_S,
    Lease,
    QuotaBook,
    QuotaExceeded,
    QuotaLimits,
    Quotas,
    Refusal,
    hold_quota,
)

LOTS = 1000  # a limit high enough not to be the one under test


def granted(outcome: Lease | Refusal) -> Lease:
    assert isinstance(outcome, Lease), outcome
    return outcome


def refused(outcome: Lease | Refusal) -> Refusal:
    assert isinstance(outcome, Refusal), outcome
    return outcome


def test_a_new_key_may_send_a_burst_then_is_refused_for_rate() -> None:
    book = QuotaBook()
    limits = QuotaLimits(rate=1, burst=3, concurrency=LOTS)
    for _ in range(3):
        granted(book.acquire("alice", limits, now=100.0))
    refusal = refused(book.acquire("alice", limits, now=100.0))
    assert refusal.reason == "rate"
    assert refusal.retry_after_s == 1


def test_tokens_refill_at_the_rate_and_never_beyond_the_burst() -> None:
    book = QuotaBook()
    limits = QuotaLimits(rate=2, burst=4, concurrency=LOTS)
    for _ in range(4):
        granted(book.acquire("k", limits, now=0.0))
    refused(book.acquire("k", limits, now=0.4))  # 0.8 tokens
    granted(book.acquire("k", limits, now=0.5))  # 1 token
    refused(book.acquire("k", limits, now=0.5))
    # An hour idle refills to the burst, not to 7200 requests.
    for _ in range(4):
        granted(book.acquire("k", limits, now=3600.0))
    refused(book.acquire("k", limits, now=3600.0))


@pytest.mark.parametrize(
    ("rate", "elapsed", "retry_after"),
    [
        (0.5, 0.0, 2),  # 1 token needed at 0.5/s
        (0.5, 1.5, 1),  # 0.25 token needed: 0.5 s, rounded up to 1
        (0.1, 0.0, 10),
        (0.1, 2.5, 8),  # 0.75 token needed at 0.1/s: 7.5 s -> 8
        (100.0, 0.0, 1),  # 10 ms, but never less than 1 s
    ],
)
def test_retry_after_is_the_wait_for_one_token_in_whole_seconds(
    rate: float, elapsed: float, retry_after: int
) -> None:
    book = QuotaBook()
    limits = QuotaLimits(rate=rate, burst=1, concurrency=LOTS)
    granted(book.acquire("k", limits, now=10.0))
    refusal = refused(book.acquire("k", limits, now=10.0 + elapsed))
    assert refusal.reason == "rate"
    assert refusal.retry_after_s == retry_after
    assert f"retry in {retry_after} s" in refusal.message


def test_concurrency_is_capped_until_a_lease_is_released() -> None:
    book = QuotaBook()
    limits = QuotaLimits(rate=LOTS, burst=LOTS, concurrency=2)
    first = granted(book.acquire("k", limits, now=0.0))
    granted(book.acquire("k", limits, now=0.0))
    refusal = refused(book.acquire("k", limits, now=0.0))
    assert refusal.reason == "concurrency"
    assert refusal.retry_after_s == CONCURRENCY_RETRY_S == 1
    assert book.in_progress("k") == 2

    assert book.release(first.id) is True
    assert book.release(first.id) is False  # twice is harmless
    assert book.in_progress("k") == 1
    granted(book.acquire("k", limits, now=0.0))


def test_a_concurrency_refusal_spends_no_token() -> None:
    book = QuotaBook()
    limits = QuotaLimits(rate=0.001, burst=2, concurrency=1)
    lease = granted(book.acquire("k", limits, now=0.0))
    for _ in range(5):
        assert refused(book.acquire("k", limits, now=0.0)).reason == "concurrency"
    book.release(lease.id)
    granted(book.acquire("k", limits, now=0.0))  # the second token is still there


def test_a_lease_never_released_expires_and_is_reclaimed(caplog: pytest.LogCaptureFixture) -> None:
    book = QuotaBook(lease_s=30.0)
    limits = QuotaLimits(rate=LOTS, burst=LOTS, concurrency=1)
    lost = granted(book.acquire("k", limits, now=0.0))  # its Ingress replica dies
    assert lost.expires_at == 30.0
    assert refused(book.acquire("k", limits, now=29.9)).reason == "concurrency"
    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        fresh = granted(book.acquire("k", limits, now=30.0))
    assert "reclaimed 1 expired lease" in caplog.text
    assert book.release(lost.id) is False  # a late release of the reclaimed lease
    assert book.in_progress("k") == 1
    assert book.release(fresh.id) is True


def test_keys_are_independent() -> None:
    book = QuotaBook()
    limits = QuotaLimits(rate=0.01, burst=1, concurrency=1)
    granted(book.acquire("alice", limits, now=0.0))
    refused(book.acquire("alice", limits, now=0.0))
    bob = granted(book.acquire("bob", limits, now=0.0))
    assert (book.in_progress("alice"), book.in_progress("bob")) == (1, 1)
    book.release(bob.id)
    assert (book.in_progress("alice"), book.in_progress("bob")) == (1, 0)
    refused(book.acquire("alice", limits, now=0.0))


def test_limits_and_lease_time_are_validated() -> None:
    for bad in ({"rate": 0}, {"burst": 0}, {"concurrency": 0}, {"rait": 1}):
        with pytest.raises(ValidationError):
            QuotaLimits.model_validate(bad)
    with pytest.raises(ValueError, match="lease_s"):
        QuotaBook(lease_s=0)


# --- the deployment class and the caller's helper, without Ray ---------------------------------


def test_the_deployment_class_holds_one_book() -> None:
    quotas = Quotas.func_or_class(lease_s=60.0)
    limits = QuotaLimits(rate=LOTS, burst=LOTS, concurrency=1)

    async def scenario() -> None:
        lease = granted(await quotas.acquire("k", limits))
        refused(await quotas.acquire("k", limits))
        assert await quotas.release(lease.id) is True
        granted(await quotas.acquire("k", limits))

    asyncio.run(scenario())
    assert Quotas.num_replicas == 1


class _Method:
    def __init__(self, fn: Any) -> None:
        self._fn = fn

    def remote(self, *args: Any) -> Any:
        return self._fn(*args)


class FakeHandle:
    """What ``hold_quota`` uses of a DeploymentHandle, over a real book and a fixed clock."""

    def __init__(self, book: QuotaBook, fail_release: bool = False) -> None:
        self.book = book
        self.released: list[str] = []
        self.fail_release = fail_release
        self.acquire = _Method(self._acquire)
        self.release = _Method(self._release)

    async def _acquire(self, key: str, limits: QuotaLimits) -> Lease | Refusal:
        return self.book.acquire(key, limits, now=0.0)

    async def _release(self, lease_id: str) -> bool:
        self.released.append(lease_id)
        if self.fail_release:
            raise ConnectionError("Quotas replica gone")
        return self.book.release(lease_id)


def test_hold_quota_releases_even_when_the_work_fails() -> None:
    handle = FakeHandle(QuotaBook())
    limits = QuotaLimits(rate=LOTS, burst=LOTS, concurrency=1)

    async def scenario() -> None:
        async with hold_quota(handle, "k", limits) as lease:  # type: ignore[arg-type]
            assert handle.book.in_progress("k") == 1
        assert handle.released == [lease.id]
        with pytest.raises(RuntimeError, match="boom"):
            async with hold_quota(handle, "k", limits):  # type: ignore[arg-type]
                raise RuntimeError("boom")
        assert len(handle.released) == 2
        assert handle.book.in_progress("k") == 0

    asyncio.run(scenario())


def test_hold_quota_raises_quota_exceeded_with_the_retry_after() -> None:
    handle = FakeHandle(QuotaBook())
    limits = QuotaLimits(rate=0.2, burst=1, concurrency=LOTS)

    async def scenario() -> None:
        async with hold_quota(handle, "k", limits):  # type: ignore[arg-type]
            pass
        with pytest.raises(QuotaExceeded, match="over its rate") as info:
            async with hold_quota(handle, "k", limits):  # type: ignore[arg-type]
                pytest.fail("the block must not run when refused")
        assert (info.value.reason, info.value.retry_after_s) == ("rate", 5)
        copy = pickle.loads(pickle.dumps(info.value))  # as it would cross a Ray boundary
        assert (str(copy), copy.retry_after_s) == (str(info.value), 5)
        assert len(handle.released) == 1  # nothing to release for a refusal

    asyncio.run(scenario())


def test_a_failed_release_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    handle = FakeHandle(QuotaBook(), fail_release=True)
    limits = QuotaLimits()

    async def scenario() -> str:
        async with hold_quota(handle, "k", limits):  # type: ignore[arg-type]
            return "answered"

    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        assert asyncio.run(scenario()) == "answered"
    assert "could not release quota lease" in caplog.text
