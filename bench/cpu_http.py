"""Served latency of a real photo through ``make run``'s stack beside the ncnn runtime, same cores.

    .venv/bin/python bench/cpu_http.py            # ~4-6 min on 2 cores (more on the first run)
    .venv/bin/python bench/cpu_http.py --quick    # one timed request, one ncnn run of each kind

The photo: a 300x200 crop of ``skimage.data.chelsea()`` (a real photograph of a cat; rows 40-240,
columns 80-380), JPEG quality 90. The model: realesrgan-x4plus, so the answer is 1200x800.

The stack is started as ``make run`` starts it: ``python -m devtools.run`` in a subprocess of its
own session (local S3 on a free port, the default weights in ``SUPERRES_WEIGHTS_DIR``, default
``.run/weights``, then ``serve run``) with a copy of ``configs/serve_config.yaml`` in which only
``http_options.port`` differs (a free port), and Ray's temp dir ``.run/ray-cpu-http``. After
``/readyz`` answers 200 it sends the photo to ``POST /v1/upscale?model=realesrgan-x4plus``: once
as a warm-up (reported apart), then ``--runs`` times. Each answer gives the HTTP latency, the
server's own ``timings``, tiles and forward passes (``GET /v1/stats`` before and after) and the
Upscaler replica's CPU time per thread (``/proc``); the result is downloaded from its presigned URL
and must be 1200x800. The stack is always stopped (SIGTERM to the launcher's process group, which
stops ``serve run`` and the S3 server; anything left of it is killed after a grace period).

In the same run, on the same decoded photo, the ncnn CPU runtime (``devtools/ncnn_runtime.py``)
runs with as many threads as torch gets in the Upscaler replica (Ray sets OMP_NUM_THREADS to
floor(``ray_actor_options.num_cpus``), at least 1, unless the environment sets it), at the replica's
niceness (Ray starts its workers niced), in a worker process. Tile policy:
the whole 300x200 image in one pass. That is ncnn's default on CPU: the ncnn-vulkan upscalers
(waifu2x/realcugan/realsr-ncnn-vulkan) pick tile 4000 for ``-g -1``, and Real-ESRGAN-ncnn-vulkan
itself has no CPU mode. Two ncnn variants: default options (what ncnn's tools run) and fp32. Each
round sends one request, then runs each ncnn variant once, so both see the same load. Read the
ratio served/ncnn (< 1: the service is faster); absolute times move with the machine's load.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import math
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml
from stack import REPO, RUN_DIR, BenchError, free_port, progress, run_bench

MODEL = "realesrgan-x4plus"
CONFIG = REPO / "configs" / "serve_config.yaml"
WORK = RUN_DIR / "bench-cpu-http"
RAY_TMPDIR = RUN_DIR / "ray-cpu-http"
PHOTO_BOX = (40, 240, 80, 380)  # rows, columns of skimage.data.chelsea() (300 x 451)
JPEG_QUALITY = 90
EXPECTED_SIZE = (1200, 800)
REQUEST_TIMEOUT_S = 600.0
STOP_TIMEOUT_S = 150.0  # the launcher stops serve run (<= 60 s, then kill) and the S3 server
SERVED_CODE = ("models", "deployments", "serve_app", "devtools", "configs/serve_config.yaml")
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
REPLICA = re.compile(r"^ray::ServeReplica:[^:\s]+:Upscaler")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- the machine and its processes ------------------------------------------------------------


def cpu_description() -> str:
    text = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.*)$", text, re.M)
    flags_line = re.search(r"^flags\s*:\s*(.*)$", text, re.M)
    flags = set(flags_line.group(1).split()) if flags_line else set()
    has = ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in CPU_FLAGS)
    usable = len(os.sched_getaffinity(0))
    return (
        f"{model.group(1) if model else 'unknown'}; {has}; {os.cpu_count()} cores ({usable} usable)"
    )


def code_state() -> str:
    """The commit and the uncommitted changes of the code that serves (what the figures measure)."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", *SERVED_CODE],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return "not a git checkout"
    files = [line[3:] for line in changed if line.strip()]
    return f"HEAD {head}" + (
        f", uncommitted or untracked: {', '.join(files)}" if files else ", clean"
    )


def uptime() -> str:
    try:
        out = subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout
        return out.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def _stat(pid: int | str, task: int | None = None) -> list[str] | None:
    """Fields 3 onwards of /proc/PID[/task/TID]/stat (after the parenthesised command name)."""
    path = Path("/proc", str(pid), *(("task", str(task)) if task is not None else ()), "stat")
    try:
        text = path.read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def descendants(root: int) -> dict[int, str]:
    """Every live descendant of ``root``: pid → command line."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(entry.name)) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: dict[int, str] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found[pid] = cmdline(pid)
        todo += children.get(pid, [])
    return found


def processes_using(path: Path) -> list[int]:
    needle = str(path)
    return [
        int(e.name)
        for e in Path("/proc").iterdir()
        if e.name.isdigit() and needle in cmdline(int(e.name)) and "weed" in cmdline(int(e.name))
    ]


def ray_omp_threads(num_cpus: float | None) -> int:
    """What Ray sets OMP_NUM_THREADS to inside a worker when the environment leaves it unset
    (``ray._private.utils.set_omp_num_threads_if_unset``); torch takes its thread count from it."""
    return max(1, math.floor(num_cpus if num_cpus is not None else 1))


@dataclass(frozen=True)
class Replica:
    pid: int
    nice: int
    omp_threads: str  # as the replica was started; Ray may set it later, in the process

    @classmethod
    def find(cls, launcher: int) -> Replica | None:
        for pid, cmd in descendants(launcher).items():
            if REPLICA.match(cmd) and (fields := _stat(pid)) is not None:
                try:
                    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                except OSError:
                    environ = []
                omp = next(
                    (
                        e.split(b"=", 1)[1].decode()
                        for e in environ
                        if e.startswith(b"OMP_NUM_THREADS=")
                    ),
                    "",
                )
                return cls(pid, int(fields[16]), omp)
        return None

    def thread_cpu_s(self) -> dict[int, float]:
        """CPU seconds (user + system) so far of each of the replica's threads."""
        out: dict[int, float] = {}
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{self.pid}/task").iterdir():
                if (fields := _stat(self.pid, int(task.name))) is not None:
                    out[int(task.name)] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        return out


# --- the photo and the config -------------------------------------------------------------------


def write_photo(path: Path) -> bytes:
    import skimage.data
    from PIL import Image

    top, bottom, left, right = PHOTO_BOX
    buffer = io.BytesIO()
    Image.fromarray(skimage.data.chelsea()[top:bottom, left:right]).save(
        buffer, format="JPEG", quality=JPEG_QUALITY
    )
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def upscaler_deployment(config: dict[str, Any]) -> dict[str, Any]:
    for app in config.get("applications", []):
        for deployment in app.get("deployments", []):
            if deployment.get("name") == "Upscaler":
                return dict(deployment)
    return {}


def config_copy(config: dict[str, Any], port: int) -> tuple[Path, str]:
    """The repo's config with only ``http_options.port`` changed; its path and the app's URL."""
    changed = copy.deepcopy(config)
    changed.setdefault("http_options", {})["port"] = port
    path = WORK / "serve_config.yaml"
    path.write_text(
        f"# {CONFIG.relative_to(REPO)} with http_options.port = {port} (bench/cpu_http.py)\n"
        + yaml.safe_dump(changed, sort_keys=False)
    )
    host = str(changed["http_options"].get("host", "127.0.0.1"))
    return path, f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"


def free_s3_port() -> int:
    """A port for the local S3 whose gRPC twin (+10000) is free too."""
    from devtools.local_s3 import port_is_free

    for _ in range(200):
        port = random.randrange(21_000, 29_000)
        if port_is_free(port) and port_is_free(port + 10_000):
            return port
    raise BenchError("found no free port for the local S3 server")


# --- the stack ------------------------------------------------------------------------------------


def start_launcher(config: Path, s3_port: int, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env["RAY_TMPDIR"] = str(RAY_TMPDIR)  # our own, so its logs and processes are ours
    env.setdefault("SUPERRES_WEIGHTS_DIR", str(RUN_DIR / "weights"))
    # This tree's code first, in every process of the stack (the venv may hold an editable
    # install of another checkout).
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.pop("RAY_ADDRESS", None)  # never a cluster that happens to be running
    env.pop("SUPERRES_API_KEYS_FILE", None)  # make run's default: no keys, auth off
    RAY_TMPDIR.mkdir(parents=True, exist_ok=True)
    progress(f"starting the stack: python -m devtools.run (log: {log.relative_to(REPO)})")
    with log.open("wb") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "devtools.run",
                "--config",
                str(config),
                "--s3-port",
                str(s3_port),
            ],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def log_tail(log: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    return ""


def wait_ready(url: str, launcher: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    last, said = "no answer", time.monotonic()
    while time.monotonic() < deadline:
        if launcher.poll() is not None:
            raise BenchError(f"the launcher exited ({launcher.returncode}):\n{log_tail(log)}")
        try:
            r = httpx.get(f"{url}/readyz", timeout=10)
            if r.status_code == 200:
                return
            last = f"{r.status_code} {r.text[:200]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        if time.monotonic() - said > 30:
            progress(f"waiting for {url}/readyz: {last}")
            said = time.monotonic()
        time.sleep(1)
    raise BenchError(f"not ready after {timeout_s:.0f} s: {last}\n{log_tail(log)}")


def stop_launcher(launcher: subprocess.Popen[bytes], known: dict[int, str]) -> None:
    """SIGTERM to the launcher's process group; it stops serve run and the S3 server. What is
    left of its process tree (``known`` and now) after a grace period is killed: only processes
    it started, recognised by pid and unchanged command line."""
    tree = known | descendants(launcher.pid)
    if launcher.poll() is None:
        progress("stopping the stack")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launcher.pid, signal.SIGTERM)
        try:
            launcher.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            progress("the launcher did not stop in time: killing it")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
    deadline = time.monotonic() + 15
    while (left := [p for p, cmd in tree.items() if cmd and cmdline(p) == cmd]) and (
        time.monotonic() < deadline
    ):
        time.sleep(1)
    for pid in left:
        progress(f"killing a leftover of the stack: {pid} {tree[pid][:80]}")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# --- ncnn in a worker process ---------------------------------------------------------------------

NCNN_VARIANTS = ("default", "fp32")


class NcnnWorker:
    """``python bench/cpu_http.py --ncnn-worker``: loads both variants once, then times one run
    per line it reads ("default" or "fp32") and answers the seconds."""

    def __init__(self, photo: Path, threads: int, nice: int, first_output: Path) -> None:
        def lower_priority() -> None:
            os.nice(max(0, nice - os.nice(0)))

        self._process = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--ncnn-worker",
                str(photo),
                str(threads),
                str(first_output),
            ],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
            preexec_fn=lower_priority,
        )
        try:
            self._expect("ready")
        except BaseException:
            self.stop()
            raise

    def _expect(self, what: str) -> str:
        assert self._process.stdout is not None
        line = self._process.stdout.readline().strip()
        if not line:
            raise BenchError(f"the ncnn worker exited ({self._process.wait()}) before {what}")
        return line

    def run(self, variant: str) -> tuple[float, float]:
        """One run: wall seconds and the cores it used (process CPU seconds / wall seconds)."""
        assert self._process.stdin is not None
        self._process.stdin.write(variant + "\n")
        self._process.stdin.flush()
        wall, cores = self._expect(f"timing ncnn {variant}").split()
        return float(wall), float(cores)

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            os.killpg(self._process.pid, signal.SIGTERM)
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()


def ncnn_worker(photo: Path, threads: int, first_output: Path) -> int:
    import numpy as np
    from PIL import Image

    from devtools.ncnn_runtime import NcnnUpscaler
    from models.ncnn_import import package_model_files
    from models.registry import Registry

    source = Registry().get(MODEL).weights.ncnn
    if source is None:
        raise SystemExit(f"{MODEL} has no ncnn files")
    param, bin_path = package_model_files(source)
    nets = {
        variant: NcnnUpscaler(param, bin_path, fp16=variant == "default", threads=threads)
        for variant in NCNN_VARIANTS
    }
    image = np.asarray(Image.open(photo).convert("RGB"), dtype=np.float32) / 255
    print("ready", flush=True)
    saved = False
    for line in sys.stdin:
        started, cpu = time.perf_counter(), time.process_time()
        out = nets[line.strip()].run(image)
        seconds = time.perf_counter() - started
        cores = (time.process_time() - cpu) / seconds
        if not saved:
            pixels = (np.clip(out, 0, 1) * 255).round().astype(np.uint8)
            Image.fromarray(pixels).save(first_output)
            saved = True
        print(f"{seconds:.4f} {cores:.3f}", flush=True)
    return 0


# --- requests ---------------------------------------------------------------------------------------


@dataclass
class Sample:
    latency_s: float
    timings: dict[str, float]
    tiles: int | None
    forward_passes: int | None
    replica_cores: float | None  # replica CPU seconds / request seconds
    busy_threads: int | None  # threads that ran > 25% of the request's time
    result: bytes = field(repr=False, default=b"")


def served_model(client: Any, url: str) -> str:
    """What ``GET /v1/models`` says of the model: its backend and weights, where it tells."""
    r = client.get(f"{url}/v1/models")
    if r.status_code != 200:
        return f"GET /v1/models: {r.status_code}"
    entry = next((m for m in r.json() if isinstance(m, dict) and m.get("name") == MODEL), {})
    keys = ("backend", "precision", "weights_source")
    return ", ".join(f"{k} {entry[k]}" for k in keys if entry.get(k) is not None) or "?"


def stats(client: Any, url: str) -> dict[str, Any] | None:
    """The Upscaler's counters from ``GET /v1/stats`` (flat, or under "upscaler"); None if absent."""
    r = client.get(f"{url}/v1/stats")
    if r.status_code != 200:
        return None
    body = r.json()
    body = body.get("upscaler", body)
    return body if isinstance(body, dict) and {"tiles", "forward_passes"} <= body.keys() else None


def request(client: Any, url: str, jpeg: bytes, replica: Replica | None) -> Sample:
    from PIL import Image

    before = stats(client, url)
    threads_before = replica.thread_cpu_s() if replica else {}
    started = time.perf_counter()
    r = client.post(
        f"{url}/v1/upscale",
        params={"model": MODEL},
        files={"file": ("photo.jpg", jpeg, "image/jpeg")},
    )
    latency = time.perf_counter() - started
    threads_after = replica.thread_cpu_s() if replica else {}
    if r.status_code != 200:
        raise BenchError(f"POST /v1/upscale: {r.status_code} {r.text[:500]}")
    body = r.json()
    after = stats(client, url)
    download = client.get(body["url"])
    if download.status_code != 200:
        raise BenchError(f"GET the presigned result: {download.status_code} {download.text[:300]}")
    size = Image.open(io.BytesIO(download.content)).size
    if size != EXPECTED_SIZE:
        raise BenchError(f"the result is {size[0]}x{size[1]}, expected 1200x800")
    used = {t: s - threads_before.get(t, 0.0) for t, s in threads_after.items()}
    return Sample(
        latency_s=latency,
        timings={k: float(v) for k, v in body.get("timings", {}).items()},
        tiles=after["tiles"] - before["tiles"] if before and after else None,
        forward_passes=(
            after["forward_passes"] - before["forward_passes"] if before and after else None
        ),
        replica_cores=sum(used.values()) / latency if replica else None,
        busy_threads=sum(s > 0.25 * latency for s in used.values()) if replica else None,
        result=download.content,
    )


# --- the run --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    runs: int
    timeout_s: float
    ready_timeout_s: float
    threads: int | None


@dataclass
class Results:
    cpu: str = ""
    code: str = ""
    load_before: str = ""
    load_after: str = ""
    num_cpus: float | None = None
    tiling: str = ""
    threads: int = 1
    precision: str = "?"
    model: str = "?"  # what /v1/models says
    startup_s: float = 0.0
    replica: Replica | None = None
    warmup: Sample | None = None
    samples: list[Sample] = field(default_factory=list)
    ncnn: dict[str, list[float]] = field(default_factory=lambda: {v: [] for v in NCNN_VARIANTS})
    ncnn_cores: dict[str, list[float]] = field(
        default_factory=lambda: {v: [] for v in NCNN_VARIANTS}
    )
    ncnn_first: dict[str, float] = field(default_factory=dict)
    diff: tuple[float, float] | None = None  # mean, max |served - ncnn| in /255


class _Timeout(BenchError):
    pass


def _raise(message: str) -> Any:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise _Timeout(message)

    return handler


def bench(plan: Plan) -> None:
    import httpx
    import torch

    from models.loading import resolve_precision

    config = yaml.safe_load(CONFIG.read_text())
    upscaler = upscaler_deployment(config)
    cpus = upscaler.get("ray_actor_options", {}).get("num_cpus")
    res = Results(
        cpu=cpu_description(),
        code=code_state(),
        num_cpus=None if cpus is None else float(cpus),
        tiling=", ".join(
            f"{k} {v}" for k, v in upscaler.get("user_config", {}).items() if k.startswith("tile")
        ),
    )
    if plan.threads is None and res.num_cpus is None:
        raise BenchError(
            "the config gives the Upscaler no ray_actor_options.num_cpus: pass --threads"
        )
    res.threads = plan.threads or ray_omp_threads(res.num_cpus)
    res.precision = resolve_precision(  # what the replica's ModelProvider picks (x4plus: half ok)
        str(config["applications"][0].get("args", {}).get("precision", "auto")),
        torch.device("cpu"),
        supports_half=True,
    )
    if "SUPERRES_S3_ENDPOINT_URL" not in os.environ and (pids := processes_using(RUN_DIR / "s3")):
        raise BenchError(
            f"a local S3 server already uses {RUN_DIR / 's3'} (pid {pids}): is `make run` running? "
            "Stop it first; the launcher always keeps its data there"
        )
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "ncnn.png").unlink(missing_ok=True)
    jpeg = write_photo(WORK / "photo.jpg")
    config_path, url = config_copy(config, free_port())
    log = WORK / "launcher.log"

    signal.signal(signal.SIGALRM, _raise(f"the bench ran past --timeout {plan.timeout_s:.0f} s"))
    signal.signal(signal.SIGTERM, _raise("terminated"))
    signal.alarm(max(1, int(plan.timeout_s - STOP_TIMEOUT_S - 20)))
    res.load_before = uptime()
    started = time.monotonic()
    launcher = start_launcher(config_path, free_s3_port(), log)
    known: dict[int, str] = {}  # the stack's processes, in case the launcher dies first
    worker: NcnnWorker | None = None
    try:
        wait_ready(url, launcher, log, plan.ready_timeout_s)
        res.startup_s = time.monotonic() - started
        progress(f"ready at {url} after {res.startup_s:.0f} s")
        known = descendants(launcher.pid)
        res.replica = Replica.find(launcher.pid)
        try:
            worker = NcnnWorker(
                WORK / "photo.jpg",
                res.threads,
                res.replica.nice if res.replica else 0,
                WORK / "ncnn.png",
            )
            with httpx.Client(timeout=REQUEST_TIMEOUT_S) as client:
                progress("warm-up request")
                res.warmup = request(client, url, jpeg, res.replica)
                res.model = served_model(client, url)
                for variant in NCNN_VARIANTS:
                    progress(f"warm-up ncnn {variant}")
                    res.ncnn_first[variant] = worker.run(variant)[0]
                for i in range(plan.runs):
                    sample = request(client, url, jpeg, res.replica)
                    res.samples.append(sample)
                    line = f"run {i + 1}/{plan.runs}: HTTP {sample.latency_s:.2f} s"
                    for variant in NCNN_VARIANTS:
                        seconds, cores = worker.run(variant)
                        res.ncnn[variant].append(seconds)
                        res.ncnn_cores[variant].append(cores)
                        line += f", ncnn {variant} {seconds:.2f} s"
                    line += f" (load {os.getloadavg()[0]:.1f})"
                    progress(line)
            res.load_after = uptime()
        finally:
            if worker is not None:
                worker.stop()
    finally:
        signal.alarm(0)
        for sig in (signal.SIGTERM, signal.SIGINT):  # stopping is bounded: let it finish
            signal.signal(sig, signal.SIG_IGN)
        stop_launcher(launcher, known)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    res.diff = compare(res.samples[-1].result, WORK / "ncnn.png")
    report(res)


def compare(served: bytes, ncnn_png: Path) -> tuple[float, float] | None:
    import numpy as np
    from PIL import Image

    if not ncnn_png.exists():
        return None
    a = np.asarray(Image.open(io.BytesIO(served)).convert("RGB"), dtype=np.float32)
    b = np.asarray(Image.open(ncnn_png).convert("RGB"), dtype=np.float32)
    d = np.abs(a - b)
    return float(d.mean()), float(d.max())


def _row(name: str, values: list[float]) -> str:
    if not values:
        return f"  {name:44s} {'-':>8s}"
    return f"  {name:44s} {statistics.median(values):8.2f} {min(values):8.2f} {max(values):8.2f}"


def report(res: Results) -> None:
    samples = res.samples
    http = [s.latency_s for s in samples]
    keys = list(dict.fromkeys(k for s in samples for k in s.timings))
    replica = res.replica
    print(
        f"\nrealesrgan-x4plus over HTTP (`make run`'s stack) vs the ncnn runtime: a 300x200 JPEG q{JPEG_QUALITY}"
        f" (skimage chelsea, rows {PHOTO_BOX[0]}-{PHOTO_BOX[1]}, cols {PHOTO_BOX[2]}-{PHOTO_BOX[3]}) → 1200x800"
    )
    print(f"CPU: {res.cpu}")
    print(f"code: {res.code}")
    print(
        f"Upscaler replica: num_cpus {res.num_cpus} (config) → ncnn threads {res.threads}; "
        f"torch precision {res.precision} (auto on this CPU); tiling: {res.tiling or '?'}"
    )
    print(f"  {MODEL} per GET /v1/models: {res.model}")
    cores = [s.replica_cores for s in samples if s.replica_cores is not None]
    if replica:
        busy = [s.busy_threads for s in samples if s.busy_threads is not None]
        print(
            f"  replica pid {replica.pid}: nice {replica.nice}, OMP_NUM_THREADS "
            + (
                f"{replica.omp_threads} (from the environment)"
                if replica.omp_threads
                else f"{ray_omp_threads(res.num_cpus)} (Ray's default: floor(num_cpus))"
            )
            + "; busy threads during a request (each > 25% of its time): "
            + (f"{statistics.median(busy):.0f}" if busy else "?")
        )
    else:
        print("  the Upscaler replica process was not found: no thread figures")
    tiles = [s.tiles for s in samples if s.tiles is not None]
    passes = [s.forward_passes for s in samples if s.forward_passes is not None]
    if tiles and passes:
        print(
            f"  tiles per request: {statistics.median(tiles):.0f} in {statistics.median(passes):.0f} forward pass(es)"
        )
    print(f"load before: {res.load_before}\nload after:  {res.load_after}")
    print(f"startup (launcher to /readyz 200): {res.startup_s:.0f} s\n")
    print(
        f"  {'seconds (n = ' + str(len(samples)) + ')':44s} {'median':>8s} {'min':>8s} {'max':>8s}"
    )
    print(_row("HTTP latency, POST /v1/upscale", http))
    for key in keys:
        print(_row(f"  server {key}", [s.timings[key] for s in samples if key in s.timings]))
    outside = [s.latency_s - sum(s.timings.values()) for s in samples]
    print(_row("  HTTP minus the server's timings", outside))
    for variant in NCNN_VARIANTS:
        print(_row(f"ncnn {variant} options, {res.threads} thread(s)", res.ncnn[variant]))
    print(
        "  cores used (CPU s / wall s, median): replica "
        + (f"{statistics.median(cores):.2f}" if cores else "?")
        + "".join(f", ncnn {v} {statistics.median(res.ncnn_cores[v]):.2f}" for v in NCNN_VARIANTS)
        + " (below the thread count: the machine is busy, or threads wait)"
    )
    if res.warmup:
        w = res.warmup
        print(
            f"\nwarm-up request: HTTP {w.latency_s:.2f} s ("
            + ", ".join(f"{k} {v:.2f}" for k, v in w.timings.items())
            + "); ncnn first runs: "
            + ", ".join(f"{k} {v:.2f} s" for k, v in res.ncnn_first.items())
        )
    best = min(NCNN_VARIANTS, key=lambda v: statistics.median(res.ncnn[v]))
    ncnn_s = statistics.median(res.ncnn[best])
    served = statistics.median(http)
    print(
        f"served / ncnn {best} (the faster): {served / ncnn_s:.2f} (HTTP median / ncnn median; "
        f"< 1: served is faster); fastest / fastest: {min(http) / min(res.ncnn[best]):.2f}"
    )
    if "upscale_s" in keys:
        upscale = statistics.median(
            s.timings["upscale_s"] for s in samples if "upscale_s" in s.timings
        )
        print(f"server upscale_s / ncnn {best}: {upscale / ncnn_s:.2f}")
    if res.diff:
        print(
            f"result vs ncnn default output: mean |Δ| {res.diff[0]:.2f}/255, max {res.diff[1]:.0f}/255 (served JPEG)"
        )
    print(
        f"goal (issue 9): HTTP ≤ 25 s: {'met' if served <= 25 else 'NOT met'}; "
        f"served ≤ ncnn: {'met' if served <= ncnn_s else 'NOT met'}"
    )


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--ncnn-worker":
        return ncnn_worker(Path(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="timed requests after the warm-up")
    parser.add_argument("--quick", action="store_true", help="one timed request (--runs 1)")
    parser.add_argument(
        "--timeout", type=float, default=1800.0, help="hard limit, stopping included"
    )
    parser.add_argument("--ready-timeout", type=float, default=900.0, help="launch to /readyz")
    parser.add_argument(
        "--threads", type=int, help="ncnn threads (default: the replica's num_cpus)"
    )
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.timeout < STOP_TIMEOUT_S + 60:
        parser.error(f"--timeout must be at least {STOP_TIMEOUT_S + 60:.0f} s")
    plan = Plan(1 if args.quick else args.runs, args.timeout, args.ready_timeout, args.threads)
    return run_bench("cpu_http", bench, plan)


if __name__ == "__main__":
    sys.exit(main())
