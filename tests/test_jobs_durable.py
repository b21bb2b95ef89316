"""Jobs survive their runner: cancel a running job; kill the JobRunner replica mid-job and the job
still finishes, once, from what the object store holds."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.test_api import encode, noise
from tests.test_jobs_api import wait_for
from tests.test_overload import deploy_slow

pytestmark = pytest.mark.serve


@pytest.fixture(scope="module")
def slow_jobs(serve_app, tiny_weights) -> Iterator[str]:
    from ray import serve

    yield deploy_slow(serve_app, tiny_weights, "slow-jobs", bucket="superres-slow-jobs")
    serve.delete("slow-jobs")


def submit(url: str, image: bytes) -> str:
    r = httpx.post(
        f"{url}/v1/jobs",
        data={"options": json.dumps({"scale": 1})},
        files={"file": ("in.png", image)},
        timeout=60,
    )
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def running(client: httpx.Client, job_id: str, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body = client.get(f"/v1/jobs/{job_id}").json()
        if body["status"] == "running" and (body.get("progress") or {}).get("done"):
            return body
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} never showed progress: {body}")


def test_a_running_job_shows_progress_and_can_be_cancelled(slow_jobs: str) -> None:
    job_id = submit(slow_jobs, encode(noise(900, 900, seed=41)))
    with httpx.Client(base_url=slow_jobs, timeout=60) as client:
        body = running(client, job_id)
        assert 0 < body["progress"]["done"] < body["progress"]["total"]
        r = client.delete(f"/v1/jobs/{job_id}")
        assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
        done = client.get(f"/v1/jobs/{job_id}").json()
        assert done["status"] == "cancelled" and done["result"] is None
        again = client.delete(f"/v1/jobs/{job_id}")
        assert (again.status_code, again.json()["error"]["code"]) == (409, "job_finished")


def test_a_job_outlives_its_runner(slow_jobs: str) -> None:
    import ray

    job_id = submit(slow_jobs, encode(noise(700, 700, seed=42)))
    with httpx.Client(base_url=slow_jobs, timeout=60) as client:
        running(client, job_id)
        (runner,) = [
            a
            for a in ray.util.list_named_actors(all_namespaces=True)
            if "slow-jobs" in a["name"] and "JobRunner" in a["name"]
        ]
        ray.kill(ray.get_actor(runner["name"], namespace=runner["namespace"]), no_restart=False)
        done = wait_for(client, job_id, timeout_s=240)
    assert done["status"] == "succeeded", done
    assert done["attempts"] >= 2  # run again by the new runner, from the stored record and input
    assert done["result"]["key"] == f"results/jobs/{job_id}.png"
