"""Async jobs through the real app: accepted only once stored, run by the JobRunner, polled."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from tests.test_api import encode, fetch, noise

pytestmark = pytest.mark.serve


def wait_for(client: httpx.Client, job_id: str, timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body = client.get(f"/v1/jobs/{job_id}").json()
        if body["status"] in ("succeeded", "failed", "cancelled"):
            return body
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish: {body}")


def submit(client: httpx.Client, image: bytes, **options: Any) -> httpx.Response:
    return client.post(
        "/v1/jobs",
        data={"operation": "upscale", "options": json.dumps(options)},
        files={"file": ("in.png", image)},
    )


def test_a_job_is_accepted_run_and_polled(serve_app) -> None:
    image = encode(noise(20, 30, seed=31))
    with serve_app.client() as client:
        r = submit(client, image, scale=2, format="webp")
        assert r.status_code == 202, r.text
        accepted = r.json()
        assert accepted["status"] in ("queued", "running", "succeeded")
        assert accepted["status_url"] == f"/v1/jobs/{accepted['id']}"
        done = wait_for(client, accepted["id"])
    assert done["status"] == "succeeded", done
    result = done["result"]
    assert (result["width"], result["height"], result["format"]) == (60, 40, "webp")
    assert result["key"] == f"results/jobs/{accepted['id']}.webp"
    assert fetch(result["url"]).size == (60, 40)
    assert done["attempts"] == 1 and not done["cache_hit"]


def test_prefer_respond_async_turns_a_sync_route_into_a_job(serve_app) -> None:
    with serve_app.client() as client:
        r = client.post(
            "/v1/upscale",
            params={"scale": 3},
            content=encode(noise(10, 10, seed=32)),
            headers={"prefer": "respond-async"},
        )
        assert r.status_code == 202, r.text
        assert r.headers["preference-applied"] == "respond-async"
        assert r.headers["location"] == r.json()["status_url"]
        done = wait_for(client, r.json()["id"])
        assert done["status"] == "succeeded" and done["result"]["width"] == 30
        # without the header: the same route answers synchronously, as before
        plain = client.post("/v1/upscale", content=encode(noise(10, 10, seed=32)))
        assert plain.status_code == 200 and "url" in plain.json()


def test_the_same_request_again_is_a_cache_hit(serve_app) -> None:
    image = encode(noise(12, 14, seed=33))
    with serve_app.client() as client:
        first = wait_for(client, submit(client, image, scale=2).json()["id"])
        again = wait_for(client, submit(client, image, scale=2).json()["id"])
        other = wait_for(client, submit(client, image, scale=3).json()["id"])
    assert not first["cache_hit"] and again["cache_hit"] and not other["cache_hit"]
    assert again["result"]["key"] == first["result"]["key"]
    assert other["result"]["key"] != first["result"]["key"]


def test_idempotency_key(serve_app) -> None:
    image = encode(noise(9, 9, seed=34))
    headers = {"idempotency-key": f"key-{time.time_ns()}"}
    with serve_app.client() as client:
        data = {"operation": "upscale", "options": json.dumps({"scale": 2})}
        first = client.post("/v1/jobs", data=data, files={"file": ("a", image)}, headers=headers)
        again = client.post("/v1/jobs", data=data, files={"file": ("a", image)}, headers=headers)
        assert first.status_code == again.status_code == 202
        assert first.json()["id"] == again.json()["id"]
        other = client.post(
            "/v1/jobs",
            data={"operation": "upscale", "options": json.dumps({"scale": 3})},
            files={"file": ("a", image)},
            headers=headers,
        )
        assert (other.status_code, other.json()["error"]["code"]) == (409, "idempotency_conflict")


def test_a_batch_makes_one_job_per_image_and_replays_in_order(serve_app) -> None:
    images = [encode(noise(8, 8, seed=s)) for s in (35, 36, 37)]
    key = {"idempotency-key": f"batch-{time.time_ns()}"}
    with serve_app.client() as client:
        r = client.post(
            "/v1/jobs",
            data={"options": json.dumps({"scale": 2})},
            files=[("file", (f"{i}.png", im)) for i, im in enumerate(images)],
            headers=key,
        )
        assert r.status_code == 202, r.text
        body = r.json()
        assert body["batch_id"] and len(body["jobs"]) == 3
        replayed = client.post(  # the same batch with the same Idempotency-Key: the same jobs
            "/v1/jobs",
            data={"options": json.dumps({"scale": 2})},
            files=[("file", (f"{i}.png", im)) for i, im in enumerate(images)],
            headers=key,
        )
        assert replayed.status_code == 202, replayed.text
        assert replayed.json()["batch_id"] == body["batch_id"]
        assert [j["id"] for j in replayed.json()["jobs"]] == [j["id"] for j in body["jobs"]]
        done = [wait_for(client, job["id"]) for job in body["jobs"]]
        listed = client.get("/v1/jobs", params={"status": "succeeded", "limit": 100}).json()
    assert all(j["status"] == "succeeded" and j["batch_id"] == body["batch_id"] for j in done)
    assert {j["id"] for j in done} <= {j["id"] for j in listed["jobs"]}


BAD_JOBS = [
    ({"operation": "sharpen"}, True, 422, "validation_error"),
    ({"options": json.dumps({"scale": 99})}, True, 422, "validation_error"),
    ({"options": "{not json"}, True, 422, "validation_error"),
    ({"options": "null"}, True, 422, "validation_error"),
    ({"options": "[1]"}, True, 422, "validation_error"),
    ({"colour": "red"}, True, 422, "validation_error"),
    ({}, False, 400, "missing_file"),
    ({"image_url": "http://127.0.0.1:1/x.png"}, False, 400, "invalid_option"),
]


@pytest.mark.parametrize(("fields", "with_file", "status", "code"), BAD_JOBS)
def test_bad_jobs_are_refused_before_anything_is_stored(
    serve_app, fields, with_file, status, code
) -> None:
    # without a file: still multipart, with a text part only
    files = {"file": ("a", encode(noise(8, 8)))} if with_file else {"webhook_url": (None, "")}
    with serve_app.client() as client:
        r = client.post("/v1/jobs", data=fields, files=files)
    assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text


def test_unknown_jobs_are_404(serve_app) -> None:
    with serve_app.client() as client:
        assert client.get("/v1/jobs/job_nothing").status_code == 404
        assert client.delete("/v1/jobs/job_nothing").status_code == 404
