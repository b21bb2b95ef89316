"""Jobs under a burst, with the sync route beside it: jobs/s, queue latency, end-to-end latency.

One run on loopback: a local S3, a fresh Ray with the app (a tiny real-architecture model, the
Serve config's deployment options, one replica each). Phase 1 sends ``--requests`` images through
``POST /v1/upscale`` at ``--concurrency`` (the sync baseline); phase 2 submits the same number as
jobs all at once (``POST /v1/jobs``) and polls them to the end. Bounded in count and time.

    .venv/bin/python bench/jobs.py [--quick] [--requests N] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from load import MODEL, READY_TIMEOUT_S, config_options, machine, tiny_model
from serve_e2e import make_images
from stack import RUN_DIR, BenchError, progress, run_bench, services, wait_ready

PHASE_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Plan:
    requests: int
    concurrency: int
    size: int
    json_path: Path | None


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    a = np.array(values)
    return {q: round(float(np.percentile(a, int(q[1:]))), 3) for q in ("p50", "p90", "p99")} | {
        "max": round(float(a.max()), 3)
    }


async def sync_phase(client: Any, images: list[bytes], plan: Plan) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    queue = list(range(plan.requests))

    async def worker() -> None:
        while queue:
            i = queue.pop()
            started = time.perf_counter()
            r = await client.post("/v1/upscale", files={"file": ("i.png", images[i % len(images)])})
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            if r.status_code == 200:
                latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.wait_for(
        asyncio.gather(*(worker() for _ in range(plan.concurrency))), PHASE_TIMEOUT_S
    )
    wall = time.perf_counter() - started
    return {
        "per_s": round(len(latencies) / wall, 2),
        "latency_s": percentiles(latencies),
        "statuses": statuses,
    }


async def jobs_phase(client: Any, images: list[bytes], plan: Plan) -> dict[str, Any]:
    started = time.perf_counter()

    async def submit(i: int) -> tuple[str, float]:
        t0 = time.perf_counter()
        # every image differs (make_images crops), so no job is a cache hit
        r = await client.post("/v1/jobs", files={"file": ("i.png", images[i % len(images)])})
        if r.status_code != 202:
            raise BenchError(f"POST /v1/jobs answered {r.status_code}: {r.text[:200]}")
        return r.json()["id"], time.perf_counter() - t0

    accepted = await asyncio.gather(*(submit(i) for i in range(plan.requests)))
    submitted = time.perf_counter() - started
    pending = {job_id for job_id, _ in accepted}
    records: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + PHASE_TIMEOUT_S
    while pending and time.monotonic() < deadline:
        for job_id in list(pending):
            body = (await client.get(f"/v1/jobs/{job_id}")).json()
            if body["status"] in ("succeeded", "failed", "cancelled"):
                records[job_id] = body
                pending.discard(job_id)
        await asyncio.sleep(0.2)
    wall = time.perf_counter() - started
    done = [r for r in records.values() if r["status"] == "succeeded"]

    def seconds(record: dict[str, Any], a: str, b: str) -> float:
        return (
            datetime.fromisoformat(record[b]) - datetime.fromisoformat(record[a])
        ).total_seconds()

    return {
        "per_s": round(len(done) / wall, 2),
        "accept_s": percentiles([s for _, s in accepted]),
        "accepted_all_in_s": round(submitted, 3),
        "queue_s": percentiles(
            [seconds(r, "created_at", "started_at") for r in done if r["started_at"]]
        ),
        "end_to_end_s": percentiles([seconds(r, "created_at", "finished_at") for r in done]),
        "statuses": {
            s: sum(r["status"] == s for r in records.values()) for s in ("succeeded", "failed")
        },
        "unfinished": len(pending),
        "cache_hits": sum(bool(r["cache_hit"]) for r in done),
    }


def bench(plan: Plan) -> None:
    import httpx

    images = make_images(plan.requests, plan.size)
    with services("jobs", RUN_DIR / "bench", "jobs-") as base:
        from ray import serve

        from serve_app.app import APP_NAME, AppArgs, build

        args = AppArgs(
            default_model=MODEL,
            models=[],
            preload=[MODEL],
            custom_models=[tiny_model(base.work, "compact")],
            face_enhance=False,
        )
        fixed = {"num_replicas": 1, "autoscaling_config": None}
        options = {n: {**o, **fixed} for n, o in config_options().items() if n != "FaceRestorer"}
        serve.run(build(args, base.settings, options), name=APP_NAME, route_prefix="/")
        wait_ready(base.url, READY_TIMEOUT_S)

        async def run() -> dict[str, Any]:
            limits = httpx.Limits(max_connections=plan.requests + 8)
            async with httpx.AsyncClient(base_url=base.url, timeout=300, limits=limits) as client:
                progress(f"sync: {plan.requests} requests at concurrency {plan.concurrency}")
                sync = await sync_phase(client, images, plan)
                progress(f"jobs: {plan.requests} submitted at once")
                jobs = await jobs_phase(client, images, plan)
                return {"sync": sync, "jobs": jobs}

        results = asyncio.run(run())
    results["machine"] = machine()
    results["plan"] = {
        "requests": plan.requests,
        "concurrency": plan.concurrency,
        "size": plan.size,
    }
    print(json.dumps(results, indent=2))
    if plan.json_path is not None:
        plan.json_path.write_text(json.dumps(results, indent=2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="16 images of 48 px")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--json", type=Path, default=None)
    ns = parser.parse_args(argv)
    requests, size = (16, 48) if ns.quick else (ns.requests, ns.size)
    return run_bench("bench/jobs.py", bench, Plan(requests, ns.concurrency, size, ns.json))


if __name__ == "__main__":
    sys.exit(main())
