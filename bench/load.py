"""A bounded load test on loopback: steady load, an overload burst, health under load, recovery.

    .venv/bin/python bench/load.py --quick            # phases ~20 s, 45-70 s with start-up
    .venv/bin/python bench/load.py --json load.json   # the numbers as JSON too

One run starts its own local S3 (SeaweedFS) and Ray on free 127.0.0.1 ports (``bench/stack.py``),
deploys the app (``serve_app.app.build``) with a tiny random network of a real architecture
(``tests/tiny_models.py``) as its only model, and sends HTTP requests to that server only. Every
phase stops sending at a request count or a wall-clock limit, whichever comes first; requests in
flight then get ``--request-timeout`` more (the burst: none past its limit) and are cancelled and
counted as such after that.

1. steady: closed loop, ``--concurrency`` clients, small PNGs through ``POST /v1/upscale``;
2. burst: ``max_ongoing_requests x replicas + max_queued_requests + --extra`` requests of the
   Upscaler, all at once (its options as deployed: the decorator's, then configs/serve_config.yaml's,
   with fixed replicas); an unbounded queue (-1) counts as 0 and is reported as such;
3. health under load: ``GET /healthz`` and ``GET /readyz`` polled during phases 1 and 2 (and a
   few times at idle first), each on its own connection;
4. recovery: after the burst, a few requests one at a time; each must be a 200.

Per phase: requests sent and answered, requests/s, latency min/p50/p90/p99/max, answers by status
(``503 overloaded`` = status and the body's error code; transport errors by exception name), the
RSS of this Ray instance's processes (the driver's descendants, from /proc) before and after, and
the load average. The machine (CPU model, cores) is printed with them. Exit status 1 if recovery
fails. The Ingress's and Upscaler's autoscaling is replaced by one replica each, so the capacity
is known.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # devtools/, tests/: not installed
from serve_e2e import make_images
from stack import REPO, RUN_DIR, BenchError, progress, run_bench, services, wait_ready

MODEL = "tiny-x4"
READY_TIMEOUT_S = 180.0
CONFIG = REPO / "configs" / "serve_config.yaml"
# Deployment options taken from the Serve config as they are; replicas are fixed instead.
PASSED_OPTIONS = (
    "max_ongoing_requests",
    "max_queued_requests",
    "backpressure_config",
    "ray_actor_options",
    "user_config",
)


@dataclass(frozen=True)
class Plan:
    image_size: int
    burst_image_size: int
    images: int
    concurrency: int
    steady_requests: int
    steady_s: float
    extra: int
    burst_s: float
    recovery_requests: int
    recovery_s: float
    health_interval_s: float
    request_timeout_s: float
    arch: str


# --- the machine and its processes ------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        model = next((ln.split(":", 1)[1].strip() for ln in lines if "model name" in ln), model)
    return {"cpu": model, "cores": os.cpu_count(), "python": sys.version.split()[0]}


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()  # what `uptime` prints: 1, 5 and 15 minutes


def _processes() -> dict[int, tuple[int, str, int]]:
    """pid -> (parent pid, command name, RSS bytes) of every process /proc shows."""
    page = os.sysconf("SC_PAGE_SIZE")
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            rss_pages = int(Path(entry.path, "statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):  # it ended meanwhile
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        table[int(entry.name)] = (ppid, comm, rss_pages * page)
    return table


def rss_mb() -> dict[str, float]:
    """RSS in MB of this process (the driver and the HTTP clients), of its descendants except
    SeaweedFS (this Ray instance: GCS, raylet, workers, replicas, proxy) and of SeaweedFS."""
    table = _processes()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    me = os.getpid()
    totals = {"driver": table.get(me, (0, "", 0))[2] / 1e6, "ray": 0.0, "s3": 0.0}
    stack, ray_procs = list(children.get(me, [])), 0
    while stack:
        pid = stack.pop()
        _, comm, rss = table[pid]
        stack.extend(children.get(pid, []))
        if comm == "weed":
            totals["s3"] += rss / 1e6
        else:
            totals["ray"] += rss / 1e6
            ray_procs += 1
    totals = {k: round(v, 1) for k, v in totals.items()}
    totals["ray_processes"] = ray_procs
    return totals


# --- results ----------------------------------------------------------------------------------


@dataclass
class Outcome:
    status: str  # "200", "503 overloaded", "ReadTimeout", ...
    latency_s: float
    retry_after: str | None = None


@dataclass
class Phase:
    name: str
    concurrency: int
    limit_requests: int
    limit_s: float
    sent: int = 0
    outcomes: list[Outcome] = field(default_factory=list)
    wall_s: float = 0.0
    health: dict[str, list[Outcome]] = field(default_factory=dict)
    rss_before: dict[str, float] = field(default_factory=dict)
    rss_after: dict[str, float] = field(default_factory=dict)
    load_before: tuple[float, ...] = ()
    load_after: tuple[float, ...] = ()

    @property
    def cancelled(self) -> int:
        return self.sent - len(self.outcomes)

    def ok(self) -> int:
        return sum(o.status == "200" for o in self.outcomes)

    def summary(self) -> dict[str, Any]:
        by_status = Counter(o.status for o in self.outcomes)
        if self.cancelled:
            by_status["cancelled at the limit"] = self.cancelled
        return {
            "name": self.name,
            "concurrency": self.concurrency,
            "limit_requests": self.limit_requests,
            "limit_s": self.limit_s,
            "sent": self.sent,
            "answered": len(self.outcomes),
            "ok": self.ok(),
            "wall_s": round(self.wall_s, 3),
            "requests_per_s": round(len(self.outcomes) / self.wall_s, 2) if self.wall_s else 0,
            "ok_per_s": round(self.ok() / self.wall_s, 2) if self.wall_s else 0,
            "latency_ms": latency_ms(self.outcomes),
            "by_status": dict(by_status.most_common()),
            "latency_ms_by_status": {
                s: latency_ms([o for o in self.outcomes if o.status == s]) for s in by_status
            },
            "retry_after": dict(
                Counter(o.retry_after for o in self.outcomes if o.status.startswith("503"))
            ),
            "health": {
                path: {
                    "polls": len(samples),
                    "by_status": dict(Counter(o.status for o in samples)),
                    "latency_ms": latency_ms(samples),
                    "over_1s": sum(o.latency_s > 1.0 for o in samples),
                }
                for path, samples in self.health.items()
            },
            "rss_mb_before": self.rss_before,
            "rss_mb_after": self.rss_after,
            "load_before": self.load_before,
            "load_after": self.load_after,
        }


def latency_ms(outcomes: list[Outcome]) -> dict[str, float]:
    if not outcomes:
        return {}
    ms = np.array([o.latency_s for o in outcomes]) * 1e3
    return {
        "min": round(float(ms.min()), 1),
        "p50": round(float(np.percentile(ms, 50)), 1),
        "p90": round(float(np.percentile(ms, 90)), 1),
        "p99": round(float(np.percentile(ms, 99)), 1),
        "max": round(float(ms.max()), 1),
    }


# --- the stack --------------------------------------------------------------------------------


@dataclass
class Target:
    url: str
    headers: dict[str, str]
    capacity: dict[str, Any]  # the deployed options that bound the Upscaler's queue
    auth: bool


def tiny_model(folder: Path, arch: str) -> Any:
    from deployments.config import CustomModel
    from tests.tiny_models import save_tiny_compact, save_tiny_rrdb

    path = folder / (f"{MODEL}.safetensors" if arch == "compact" else f"{MODEL}.pth")
    save = save_tiny_compact if arch == "compact" else save_tiny_rrdb
    return CustomModel(name=MODEL, path=str(path), sha256=save(path, scale=4), scale=4)


def config_options() -> dict[str, dict[str, Any]]:
    """Each deployment's options from configs/serve_config.yaml, those in PASSED_OPTIONS only."""
    import yaml

    apps = yaml.safe_load(CONFIG.read_text())["applications"]
    app = next(a for a in apps if a.get("name") == "superres")
    return {
        d["name"]: {k: v for k, v in d.items() if k in PASSED_OPTIONS}
        for d in app.get("deployments", [])
    }


def api_key(settings: Any, folder: Path) -> tuple[Any, dict[str, str]]:
    """With API keys in Settings: a key with limits far above this load, and its header."""
    if "api_keys_file" not in type(settings).model_fields:
        return settings, {}
    path = folder / "api-keys.jsonl"
    command = [sys.executable, "-m", "serve_app", "keys", "create", "bench", "--file", str(path)]
    limits = ["--rate", "1000000", "--burst", "1000000", "--concurrency", "100000"]
    created = subprocess.run(
        [*command, *limits],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    if created.returncode != 0:
        raise BenchError(f"keys create: {created.stderr.strip()}")
    key = created.stdout.strip()
    return settings.model_copy(update={"api_keys_file": path}), {"Authorization": f"Bearer {key}"}


@contextlib.contextmanager
def running_stack(plan: Plan) -> Iterator[Target]:
    with services("load", RUN_DIR / "bench", "load-") as base:
        from ray import serve

        from deployments.quota import Quotas
        from deployments.upscaler import Upscaler
        from serve_app.app import APP_NAME, AppArgs, build
        from serve_app.ingress import Ingress

        settings, headers = api_key(base.settings, base.work)
        args = AppArgs(
            default_model=MODEL,
            models=[],
            preload=[MODEL],
            custom_models=[tiny_model(base.work, plan.arch)],
            face_enhance=False,
        )
        fixed = {"num_replicas": 1, "autoscaling_config": None}
        options = {name: {**opts, **fixed} for name, opts in config_options().items()}
        options = {k: v for k, v in options.items() if k in ("Ingress", "Upscaler")}
        options.setdefault("Ingress", fixed)
        options.setdefault("Upscaler", fixed)
        capacity = {}
        deployments: list[Any] = [Ingress, Upscaler]  # Serve Deployment objects
        if headers:  # keys on: the app binds the Quotas deployment too, with its own options
            deployments.append(Quotas)
        for deployment in deployments:
            deployed = deployment.options(**options.get(deployment.name, {}))
            capacity[deployment.name] = {
                "replicas": deployed.num_replicas,
                "max_ongoing_requests": deployed.max_ongoing_requests,
                "max_queued_requests": deployed.max_queued_requests,
                "backpressure": bp.model_dump() if (bp := deployed.backpressure_config) else None,
            }
        progress(f"deploying on {base.url}: {capacity}")
        serve.run(build(args, settings, options), name=APP_NAME, route_prefix="/")
        wait_ready(base.url, READY_TIMEOUT_S)
        yield Target(base.url, headers, capacity, bool(headers))


# --- load -------------------------------------------------------------------------------------

Send = Callable[[int], Awaitable[Outcome]]


def upscaler(client: Any, images: list[bytes], size: int, headers: dict[str, str]) -> Send:
    """A request with the i-th image; its outcome (a 200 must carry the expected width)."""
    import httpx

    async def send(i: int) -> Outcome:
        started = time.perf_counter()
        files = {"file": ("image.png", images[i % len(images)], "image/png")}
        try:
            r = await client.post("/v1/upscale", files=files, headers=headers)
        except httpx.HTTPError as exc:  # timeouts, refused or dropped connections
            return Outcome(type(exc).__name__, time.perf_counter() - started)
        latency = time.perf_counter() - started
        return Outcome(label(r, 4 * size), latency, r.headers.get("retry-after"))

    return send


def label(r: Any, width: int) -> str:
    try:
        body = r.json()
    except ValueError:
        body = None
    if r.status_code == 200:
        ok = isinstance(body, dict) and body.get("width") == width
        return "200" if ok else "200 unexpected body"
    try:
        return f"{r.status_code} {body['error']['code']}"
    except (TypeError, KeyError):
        return f"{r.status_code} (not our error body)"


async def poll(
    client: Any,
    path: str,
    headers: dict[str, str],
    until: float,
    every: float,
    stop: asyncio.Event | None = None,
) -> list[Outcome]:
    """``GET path`` until ``stop`` is set or the loop's clock passes ``until``."""
    import httpx

    loop = asyncio.get_running_loop()
    samples = []
    while loop.time() < until and not (stop and stop.is_set()):
        started = time.perf_counter()
        try:
            r = await client.get(path, headers=headers)
            status = str(r.status_code)
        except httpx.HTTPError as exc:
            status = type(exc).__name__
        samples.append(Outcome(status, time.perf_counter() - started))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for((stop or asyncio.Event()).wait(), every)
    return samples


async def run_phase(
    phase: Phase,
    start: Callable[[], list[asyncio.Task[Any]]],
    health: Callable[..., Any] | None,
    grace_s: float = 0.0,
) -> None:
    """Runs the tasks ``start`` makes until they end or ``phase.limit_s + grace_s`` passes (then
    cancels them), with the health pollers beside them; RSS and load before and after."""
    phase.rss_before, phase.load_before = rss_mb(), load_average()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    pollers = health(loop.time() + phase.limit_s + grace_s, stop) if health else {}
    started = time.perf_counter()
    tasks = start()
    _, pending = await asyncio.wait(tasks, timeout=phase.limit_s + grace_s)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    phase.wall_s = time.perf_counter() - started
    stop.set()
    phase.health = {path: await task for path, task in pollers.items()}
    phase.rss_after, phase.load_after = rss_mb(), load_average()


def closed_loop(phase: Phase, send: Send) -> Callable[[], list[asyncio.Task[Any]]]:
    """``phase.concurrency`` clients, each sending its next request when its last one returns,
    until ``phase.limit_requests`` are sent or ``phase.limit_s`` has passed (requests in flight
    then finish within ``run_phase``'s grace)."""

    def start() -> list[asyncio.Task[Any]]:
        loop = asyncio.get_running_loop()
        stop_at = loop.time() + phase.limit_s

        async def client() -> None:
            while phase.sent < phase.limit_requests and loop.time() < stop_at:
                i, phase.sent = phase.sent, phase.sent + 1
                phase.outcomes.append(await send(i))

        return [asyncio.create_task(client()) for _ in range(phase.concurrency)]

    return start


def all_at_once(phase: Phase, send: Send) -> Callable[[], list[asyncio.Task[Any]]]:
    async def one(i: int) -> None:
        phase.outcomes.append(await send(i))

    def start() -> list[asyncio.Task[Any]]:
        phase.sent = phase.limit_requests
        return [asyncio.create_task(one(i)) for i in range(phase.limit_requests)]

    return start


def burst_size(capacity: dict[str, Any], extra: int) -> int:
    up = capacity["Upscaler"]
    return up["max_ongoing_requests"] * up["replicas"] + max(up["max_queued_requests"], 0) + extra


async def measure(
    plan: Plan, target: Target
) -> tuple[list[Phase], dict[str, list[Outcome]], dict[str, str]]:
    import httpx

    small = make_images(plan.images, plan.image_size)
    large = make_images(plan.images, plan.burst_image_size, seed=1)
    burst = burst_size(target.capacity, plan.extra)
    timeout = httpx.Timeout(plan.request_timeout_s)
    limits = httpx.Limits(max_connections=burst + plan.concurrency + 4)
    h = target.headers
    async with (
        httpx.AsyncClient(base_url=target.url, timeout=timeout, limits=limits) as client,
        httpx.AsyncClient(base_url=target.url, timeout=timeout) as health_client,
    ):

        def health(until: float, stop: asyncio.Event) -> dict[str, asyncio.Task[Any]]:
            return {
                path: asyncio.create_task(
                    poll(health_client, path, h, until, plan.health_interval_s, stop)
                )
                for path in ("/healthz", "/readyz")
            }

        send_small = upscaler(client, small, plan.image_size, h)
        checks = {}
        if target.auth:  # the key must matter: the same request without it
            checks["without_key"] = (await upscaler(client, small, plan.image_size, {})(0)).status
        for i in range(4):  # warm-up: connections, the model's first calls
            await send_small(i)
        loop = asyncio.get_running_loop()
        idle = {}
        for path in ("/healthz", "/readyz"):
            idle[path] = await poll(health_client, path, h, loop.time() + 2.0, 0.2)

        phases = []
        steady = Phase("steady", plan.concurrency, plan.steady_requests, plan.steady_s)
        progress(f"steady: {plan.concurrency} clients, {plan.steady_s:g} s")
        await run_phase(steady, closed_loop(steady, send_small), health, plan.request_timeout_s)
        phases.append(steady)

        up = target.capacity["Upscaler"]
        queue = "unbounded" if up["max_queued_requests"] < 0 else up["max_queued_requests"]
        progress(f"burst: {burst} at once (ongoing {up['max_ongoing_requests']}, queued {queue})")
        big = Phase("burst", burst, burst, plan.burst_s)
        send_large = upscaler(client, large, plan.burst_image_size, h)
        await run_phase(big, all_at_once(big, send_large), health)
        phases.append(big)

        progress(f"recovery: {plan.recovery_requests} requests one at a time")
        after = Phase("recovery", 1, plan.recovery_requests, plan.recovery_s)
        await run_phase(after, closed_loop(after, send_small), None, plan.request_timeout_s)
        phases.append(after)
    return phases, idle, checks


# --- report -----------------------------------------------------------------------------------


def report(
    plan: Plan,
    target: Target,
    phases: list[Phase],
    idle: dict[str, list[Outcome]],
    checks: dict[str, str],
) -> dict[str, Any]:
    host = machine()
    summaries = [p.summary() for p in phases]
    up = target.capacity["Upscaler"]
    queue = up["max_queued_requests"]
    result = {
        "machine": host,
        "plan": asdict(plan),
        "deployed": target.capacity,
        "api_key": target.auth,
        "checks": checks,
        "idle_health": {p: latency_ms(s) for p, s in idle.items()},
        "phases": summaries,
    }
    print()
    print(
        f"{host['cpu']}, {host['cores']} cores; model {MODEL} (tiny random {plan.arch}, x4); "
        f"steady {plan.image_size}² PNG, burst {plan.burst_image_size}² PNG; API key: "
        f"{'yes' if target.auth else 'no (Settings has no api_keys_file)'}"
        + (f" (without it: {checks['without_key']})" if "without_key" in checks else "")
    )
    print(
        f"Upscaler: {up['replicas']} replica, max_ongoing_requests {up['max_ongoing_requests']}, "
        f"max_queued_requests {queue}{' (unbounded)' if queue < 0 else ''}; Ingress: "
        f"max_ongoing_requests {target.capacity['Ingress']['max_ongoing_requests']}, "
        f"max_queued_requests {target.capacity['Ingress']['max_queued_requests']}"
        + "".join(
            f"; {name}: {c['replicas']} replica, max_ongoing_requests "
            f"{c['max_ongoing_requests']}, max_queued_requests {c['max_queued_requests']}"
            for name, c in target.capacity.items()
            if name not in ("Ingress", "Upscaler")
        )
    )
    print()
    head = f"{'phase':<10}{'conc':>5}{'sent':>6}{'answ':>6}{'ok':>6}{'wall s':>8}{'req/s':>8}"
    print(f"{head}{'p50':>8}{'p90':>8}{'p99':>8}{'max ms':>9}  load 1m before->after")
    for p, s in zip(phases, summaries, strict=True):
        lat = s["latency_ms"] or dict.fromkeys(("p50", "p90", "p99", "max"), float("nan"))
        print(
            f"{p.name:<10}{p.concurrency:>5}{p.sent:>6}{len(p.outcomes):>6}{p.ok():>6}"
            f"{p.wall_s:>8.1f}{s['requests_per_s']:>8.1f}{lat['p50']:>8.0f}{lat['p90']:>8.0f}"
            f"{lat['p99']:>8.0f}{lat['max']:>9.0f}  {p.load_before[0]:.2f} -> {p.load_after[0]:.2f}"
        )
    print()
    print("Answers by status (latency min / p50 / max, ms):")
    for s in summaries:
        parts = []
        for status, n in s["by_status"].items():
            lat = s["latency_ms_by_status"].get(status, {})
            spread = f"{lat['min']:.0f} / {lat['p50']:.0f} / {lat['max']:.0f}" if lat else "-"
            parts.append(f"{status} x{n} ({spread})")
        retry = f"; Retry-After on 503s: {s['retry_after']}" if s["retry_after"] else ""
        print(f"  {s['name']}: {', '.join(parts)}{retry}")
    print()
    print("Health latency, ms (p50 / p99 / max, polls, > 1 s, statuses):")
    print(
        "  idle: " + ", ".join(f"{p} {fmt(latency_ms(o))}, {len(o)} polls" for p, o in idle.items())
    )
    for s in summaries:
        for path, h in s["health"].items():
            print(
                f"  {s['name']} {path}: {fmt(h['latency_ms'])}, {h['polls']} polls, "
                f"{h['over_1s']} over 1 s, {h['by_status']}"
            )
    print()
    print("RSS, MB (Ray processes of this instance / driver+clients / SeaweedFS), before -> after:")
    for p in phases:
        b, a = p.rss_before, p.rss_after
        print(
            f"  {p.name:<10} ray {b['ray']:.0f} -> {a['ray']:.0f} ({a['ray_processes']} procs), "
            f"driver {b['driver']:.0f} -> {a['driver']:.0f}, s3 {b['s3']:.0f} -> {a['s3']:.0f}"
        )
    return result


def fmt(lat: dict[str, float]) -> str:
    return f"{lat['p50']:.0f} / {lat['p99']:.0f} / {lat['max']:.0f}" if lat else "-"


# --- main -------------------------------------------------------------------------------------


def bench(ns: argparse.Namespace) -> None:
    plan: Plan = ns.plan
    started = time.perf_counter()
    with running_stack(plan) as target:
        progress(f"ready after {time.perf_counter() - started:.0f} s")
        deadline = plan.steady_s + plan.burst_s + plan.recovery_s + 60
        try:
            phases, idle, checks = asyncio.run(asyncio.wait_for(measure(plan, target), deadline))
        except TimeoutError:
            raise BenchError(f"the phases did not end within {deadline:.0f} s") from None
        result = report(plan, target, phases, idle, checks)
        sys.stdout.flush()
        progress("tearing down")
    if ns.json:
        ns.json.write_text(json.dumps(result, indent=2) + "\n")
        progress(f"wrote {ns.json}")
    progress(f"total {time.perf_counter() - started:.0f} s")
    recovery = phases[-1]
    if recovery.ok() != recovery.limit_requests:
        raise BenchError(
            f"recovery: {recovery.ok()} of {recovery.limit_requests} requests were 200s"
        )


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short phases (~20 s in all)")
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    parser.add_argument("--arch", choices=["compact", "rrdb"], default="compact")
    parser.add_argument("--image-size", type=positive, default=64, help="steady/recovery images")
    parser.add_argument("--burst-image-size", type=positive, default=256)
    parser.add_argument("--concurrency", type=positive, default=8, help="steady clients")
    parser.add_argument("--requests", type=positive, help="steady: at most (2000, quick 400)")
    parser.add_argument("--duration", type=float, help="steady: at most, s (60, quick 8)")
    parser.add_argument("--extra", type=positive, default=24, help="burst beyond the capacity")
    parser.add_argument("--burst-limit", type=float, default=60.0, help="burst: at most, s")
    parser.add_argument("--request-timeout", type=float, default=30.0)
    ns = parser.parse_args(argv)
    ns.plan = Plan(
        image_size=ns.image_size,
        burst_image_size=ns.burst_image_size,
        images=8,
        concurrency=ns.concurrency,
        steady_requests=ns.requests or (400 if ns.quick else 2000),
        steady_s=ns.duration or (8.0 if ns.quick else 60.0),
        extra=ns.extra,
        burst_s=min(ns.burst_limit, 20.0) if ns.quick else ns.burst_limit,
        recovery_requests=4 if ns.quick else 8,
        recovery_s=20.0,
        health_interval_s=0.1,
        request_timeout_s=ns.request_timeout,
        arch=ns.arch,
    )
    return run_bench("load", bench, ns)


if __name__ == "__main__":
    sys.exit(main())
