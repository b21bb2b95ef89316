"""Overload is answered fast: bounded queues, 503 + Retry-After for the excess, health unaffected."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import tiny_app_args
from tests.test_api import encode, noise

pytestmark = pytest.mark.serve

ONGOING, QUEUED, EXTRA = 1, 1, 6
# Ray Serve's router does not count a request it has sent to a replica that has not yet accepted or
# rejected it (router.py, _route_and_send_request_once): one per replica may get past the queue
# bound and then wait for a slot. So at most ONGOING + QUEUED + IN_FLIGHT of a burst are accepted.
IN_FLIGHT = 1


def deploy_slow(
    serve_app, tiny_weights, name: str, bucket: str | None = None, **args: object
) -> str:
    """An app whose one Upscaler replica takes one request at a time and queues one more; 16-px
    tiles one per forward pass make each request take a while."""
    from ray import serve

    from serve_app.app import build

    app_args = tiny_app_args(
        tiny_weights,
        jobs=bucket is not None,  # a JobRunner of its own needs a bucket of its own
        **args,
    )
    options = {
        "Upscaler": {
            "max_ongoing_requests": ONGOING,
            "max_queued_requests": QUEUED,
            "user_config": {"tile": 16, "max_batch_size": 1, "batch_wait_timeout_s": 0},
        }
    }
    settings = serve_app.settings
    if bucket is not None:
        settings = settings.model_copy(update={"s3_bucket": bucket})
    serve.run(build(app_args, settings, options), name=name, route_prefix=f"/{name}")
    return f"{serve_app.url}/{name}"


@pytest.fixture(scope="module")
def slow_app(serve_app, tiny_weights) -> Iterator[str]:
    from ray import serve

    yield deploy_slow(serve_app, tiny_weights, "slow")
    serve.delete("slow")


def timed(method: str, url: str, **kwargs: object) -> tuple[httpx.Response, float]:
    started = time.perf_counter()
    response = httpx.request(method, url, timeout=120, **kwargs)  # type: ignore[arg-type]
    return response, time.perf_counter() - started


def test_the_excess_gets_a_fast_503_and_health_stays_fast(slow_app: str) -> None:
    image = encode(noise(160, 160))
    assert httpx.get(f"{slow_app}/readyz").status_code == 200  # probes poll from the start
    alone, single = timed("POST", f"{slow_app}/v1/upscale", content=image)
    assert alone.status_code == 200, alone.text
    with ThreadPoolExecutor(ONGOING + QUEUED + EXTRA + 2) as pool:
        work = [
            pool.submit(timed, "POST", f"{slow_app}/v1/upscale", content=image)
            for _ in range(ONGOING + QUEUED + EXTRA)
        ]
        time.sleep(0.3)
        health = [pool.submit(timed, "GET", f"{slow_app}/{p}") for p in ("healthz", "readyz")]
        results = [f.result() for f in work]
        probes = [f.result() for f in health]
    statuses = sorted(r.status_code for r, _ in results)
    refused = [(r, s) for r, s in results if r.status_code == 503]
    timeline = sorted((round(s, 2), r.status_code) for r, s in results)
    assert len(refused) >= EXTRA - IN_FLIGHT, f"{statuses}; alone {single:.2f} s; {timeline}"
    assert statuses.count(200) >= ONGOING, statuses
    for response, seconds in refused:
        assert response.json()["error"]["code"] == "overloaded"
        assert int(response.headers["retry-after"]) >= 1
        assert seconds < single, f"a refusal took {seconds:.2f} s, a whole request {single:.2f} s"
    for response, seconds in probes:
        assert response.status_code == 200, response.text
        assert seconds < 2.0
    again, _ = timed("POST", f"{slow_app}/v1/upscale", content=image)
    assert again.status_code == 200, again.text


def test_a_trickling_upload_hits_its_deadline(serve_app) -> None:
    def trickle() -> Iterator[bytes]:
        yield encode(noise(8, 8))[:20]
        time.sleep(5)  # longer than TEST_LIMITS' upload_timeout_s
        yield b"\0" * 10

    started = time.perf_counter()
    r = httpx.post(f"{serve_app.url}/v1/upscale", content=trickle(), timeout=60)
    assert (r.status_code, r.json()["error"]["code"]) == (408, "upload_timeout")
    assert time.perf_counter() - started < 10


def test_an_ingress_refuses_past_its_in_flight_limit_before_reading(
    serve_app, tiny_weights
) -> None:
    from ray import serve

    url = deploy_slow(serve_app, tiny_weights, "narrow", max_in_flight=2)
    try:
        image = encode(noise(160, 160))
        with ThreadPoolExecutor(6) as pool:
            results = list(
                pool.map(lambda _: timed("POST", f"{url}/v1/upscale", content=image), range(6))
            )
        messages = [r.json()["error"]["message"] for r, _ in results if r.status_code == 503]
        at_ingress = [m for m in messages if m.startswith("this ingress is at capacity")]
        assert len(at_ingress) >= 3, messages
        assert sum(r.status_code == 200 for r, _ in results) >= 1
    finally:
        serve.delete("narrow")


def test_a_client_that_disconnects_leaves_no_work_running(slow_app: str) -> None:
    def passes() -> int:
        stats = httpx.get(f"{slow_app}/v1/stats", timeout=30).json()["upscaler"]
        return int(stats["forward_passes"])

    image = encode(noise(1100, 1100, seed=9))  # thousands of 16-px tiles, one per forward pass
    before = passes()
    done, seconds = timed("POST", f"{slow_app}/v1/upscale", content=image)
    assert done.status_code == 200, done.text
    whole = passes() - before
    assert seconds > 4, f"the request must outlast the client's patience; it took {seconds:.1f} s"
    before = passes()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{slow_app}/v1/upscale", content=image, timeout=seconds / 4)
    time.sleep(1.0)  # cancellation travels proxy -> Ingress -> Upscaler -> its tile tasks
    stopped_at = passes()
    time.sleep(2.0)
    assert passes() == stopped_at, "tiles kept running for a client that had gone"
    assert 0 < stopped_at - before < whole / 2
