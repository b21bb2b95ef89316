"""A real two-node Ray cluster on this machine, losing the node that runs the Upscaler mid-job.

Run by tests/test_jobs_cluster.py in its own process (a driver connects to one cluster only):
``python -m tests.cluster_scenario WORKDIR`` prints one JSON line of findings. The head runs the
Ingress and the JobRunner; a second node (its own raylet, started with ``ray start --address``)
holds the custom resource the Upscaler needs. Everything started here is stopped here: each node
is a ``ray start --block`` process in its own session, killed by process group (never ``ray stop``,
which would end every Ray process on the machine).

When Ray's own head dies under it (its GCS gone: seen about once in seven full CI runs, cause not yet
known; the service's code runs in Ray workers and cannot take the GCS down), the scenario stops at
once, prints what every Ray process said last, and exits with ``HEAD_LOST``, which the test answers
by running it once more on a fresh cluster. Every other failure is the service's.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).with_name("ray"))
HEAD_LOST = 75  # exit status: Ray's own head died, not the service (EX_TEMPFAIL)


class HeadLost(RuntimeError):
    """The head node's ``ray start`` exited or its GCS stopped: the cluster is gone."""


@dataclass
class Head:
    node: subprocess.Popen[bytes]
    gcs_pid: int

    def check(self) -> None:
        """Raise HeadLost if the head is gone; the driver would otherwise abort after 60 s."""
        if self.node.poll() is not None:
            raise HeadLost(f"the head's `ray start --block` exited ({self.node.returncode})")
        state = process_state(self.gcs_pid)
        if state in ("gone", "Z", "T", "t", "X"):  # exited, zombie, stopped, dead
            raise HeadLost(f"the head's GCS (pid {self.gcs_pid}) is {state}")


def process_state(pid: int) -> str:
    """/proc's one-letter state of a process (R, S, D, T, Z...), or "gone"."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "gone"


def find_gcs(ray_tmp: str) -> int | None:
    """The pid of the GCS whose logs go under ray_tmp (this scenario's, not another cluster's)."""
    log_dir = f"--log_dir={ray_tmp}/".encode()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            args = cmdline.read_bytes().split(b"\0")
            if args[0].endswith(b"/gcs_server") and any(a.startswith(log_dir) for a in args):
                return int(cmdline.parent.name)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_node(*args: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``ray start --block``: its output (which names any Ray subprocess that died) goes to log."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                RAY,
                "start",
                "--block",
                "--disable-usage-stats",
                "--node-ip-address=127.0.0.1",
                *args,
            ],
            env=env,
            start_new_session=True,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def kill(node: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(node.pid, signal.SIGKILL)
    node.wait(timeout=30)


def wait(predicate: Any, timeout_s: float, what: str, head: Head | None = None) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if head is not None:
            head.check()
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise TimeoutError(what)


def job(client: httpx.Client, job_id: str) -> dict[str, Any]:
    r = client.get(f"/v1/jobs/{job_id}")
    if r.status_code != 200:
        raise RuntimeError(f"GET /v1/jobs/{job_id}: {r.status_code} {r.text}")
    return dict(r.json())


def main(workdir: Path) -> dict[str, Any]:
    sys.path.insert(0, str(REPO))
    from tests.s3server import start_test_s3
    from tests.test_api import encode, noise
    from tests.tiny_models import save_tiny_compact

    s3 = start_test_s3(workdir / "s3")
    port = free_port()
    # A short temp dir: Ray's socket paths must fit AF_UNIX's 107 bytes
    ray_tmp = tempfile.mkdtemp(prefix="rc-", dir="/tmp")
    # token auth, as Ray's default: the CLI needs it said; every process uses ~/.ray/auth_token,
    # which Ray's first start writes (on a fresh machine: a throwaway local start makes it)
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_USAGE_STATS_ENABLED": "0"}
    os.environ.update(env)
    if not (Path.home() / ".ray" / "auth_token").exists():
        import ray

        ray.init(num_cpus=1, include_dashboard=False)
        ray.shutdown()
    env["RAY_AUTH_MODE"] = os.environ["RAY_AUTH_MODE"] = "token"
    head_node = start_node(
        "--head",
        f"--port={port}",
        "--num-cpus=2",
        "--include-dashboard=false",
        '--resources={"head": 100}',
        env=env,
        log=workdir / "head.log",
    )
    worker_args = (
        f"--address=127.0.0.1:{port}",
        "--num-cpus=2",
        '--resources={"upscaler_node": 1}',
    )
    worker: subprocess.Popen[bytes] | None = None
    head: Head | None = None
    findings: dict[str, Any] = {}
    try:
        import ray
        from ray import serve

        from models.settings import Settings
        from serve_app.app import AppArgs, build

        wait(lambda: _connect(ray, port), 90, "the head")
        head = Head(head_node, wait(lambda: find_gcs(ray_tmp), 10, "the head's GCS"))
        worker = start_node(
            *worker_args, env=env, log=workdir / "worker.log"
        )  # once the head answers
        wait(lambda: ray.cluster_resources().get("upscaler_node"), 60, "the second node", head)
        weights = workdir / "tiny-x4.safetensors"
        sha = save_tiny_compact(weights, scale=4)
        storage = s3.settings(bucket="cluster-test")
        settings = Settings(
            weights_dir=workdir / "weights",
            allow_download=False,
            s3_endpoint_url=storage.endpoint_url,
            s3_access_key_id=storage.access_key_id,
            s3_secret_access_key=storage.secret_access_key,
            s3_bucket=storage.bucket,
        )
        args = AppArgs(
            default_model="tiny-x4",
            models=[],
            preload=["tiny-x4"],
            custom_models=[{"name": "tiny-x4", "path": str(weights), "sha256": sha}],
            face_enhance=False,
        )
        on_head = {"ray_actor_options": {"num_cpus": 0, "resources": {"head": 1}}}
        options = {
            "Ingress": on_head,
            "JobRunner": on_head,
            "Upscaler": {
                "ray_actor_options": {"num_cpus": 1, "resources": {"upscaler_node": 0.5}},
                "user_config": {"tile": 16, "max_batch_size": 1, "batch_wait_timeout_s": 0},
            },
        }
        http = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": http})
        serve.run(build(args, settings, options), name="cluster", route_prefix="/")
        # under Ray's 60 s: a dead head shows up here as an error, before Ray aborts the driver
        client = httpx.Client(base_url=f"http://127.0.0.1:{http}", timeout=20)
        image = encode(noise(1200, 1200, seed=51))  # 5625 tiles: seconds, long enough to kill

        # 1. the node running the Upscaler dies mid-job; a new node joins; the job finishes once
        r = client.post(
            "/v1/jobs", files={"file": ("in.png", image)}, data={"options": '{"scale": 1}'}
        )
        job_id = r.json()["id"]
        seen = wait(
            lambda: (p := job(client, job_id).get("progress") or {}).get("done") and p,
            120,
            "progress",
            head,
        )
        kill(worker)
        findings["progress_at_kill"] = seen
        findings["status_after_kill"] = job(client, job_id)["status"]
        worker = start_node(*worker_args, env=env, log=workdir / "worker-again.log")
        done = wait(
            lambda: (b := job(client, job_id))["status"] in ("succeeded", "failed") and b,
            300,
            "job",
            head,
        )
        findings["node_loss"] = {k: done[k] for k in ("status", "attempts", "error")}
        findings["node_loss_results"] = len(s3_keys(storage, f"results/jobs/{job_id}"))

        # 2. the whole application restarts with jobs queued: they resume
        queued = [
            client.post(
                "/v1/jobs", files={"file": ("in.png", encode(noise(300, 300, seed=s)))}
            ).json()["id"]
            for s in (52, 53)
        ]
        serve.delete("cluster")
        serve.run(build(args, settings, options), name="cluster", route_prefix="/")
        finished = [
            wait(
                lambda i=i: (b := job(client, i))["status"] in ("succeeded", "failed") and b,
                300,
                i,
                head,
            )
            for i in queued
        ]
        findings["restart"] = [f["status"] for f in finished]
        serve.shutdown()
        ray.shutdown()
    except BaseException as exc:
        lost = exc if isinstance(exc, HeadLost) else head_lost(head)
        print(log_tails(workdir, Path(ray_tmp)), file=sys.stderr)  # before ray_tmp is removed
        print(f"--- {time.strftime('%H:%M:%S')} {exc!r}", file=sys.stderr)
        if lost is not None and lost is not exc:
            raise lost from exc
        raise
    finally:
        if worker is not None:
            kill(worker)
        kill(head_node)
        s3.stop()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    return findings


# Ray's own processes on each node, the likeliest culprits last (a failure shows the end)
ANSI = re.compile(r"\x1b\[[0-9;]*m")
RAY_LOGS = ("dashboard_agent", "log_monitor", "monitor", "raylet", "gcs_server", "ray_process_exit")


def head_lost(head: Head | None, within_s: float = 3) -> HeadLost | None:
    """Whether the head went, allowing ``ray start --block`` its 1 s poll to notice a death."""
    deadline = time.monotonic() + within_s
    while head is not None:
        try:
            head.check()
        except HeadLost as lost:
            return lost
        if time.monotonic() > deadline:
            return None
        time.sleep(0.2)
    return None


def log_tails(workdir: Path, ray_tmp: Path, lines: int = 25) -> str:
    """The ends of Ray's process logs and each ``ray start``'s output (a failure's first clues)."""
    paths = []
    for name in RAY_LOGS:  # not session_latest, a link to the same folder
        paths += sorted(p for p in ray_tmp.glob(f"*/session_2*/logs/{name}*") if p.is_file())
    paths += sorted(workdir.glob("*.log"))
    found = []
    for path in paths:
        text = ANSI.sub("", path.read_text(errors="replace"))
        # ray start's banner ends where --block begins: only what it said since is news
        news = text.rpartition("Process exit logs will be saved to")[2].splitlines()[1:]
        tail = (news if path.parent == workdir else text.splitlines())[-lines:]
        found.append(f"--- {path.name} ({path.parent})\n" + ("\n".join(tail) or "(nothing)"))
    return "\n".join(found) or f"no logs in {workdir} or under {ray_tmp}"


def _connect(ray: Any, port: int) -> bool:
    try:
        ray.init(address=f"127.0.0.1:{port}", log_to_driver=False)
    except Exception as exc:
        print(f"connecting: {exc}", file=sys.stderr)
        return False
    return True


def s3_keys(storage: Any, prefix: str) -> list[str]:
    from models.s3 import ResultStore

    return ResultStore(storage).keys(prefix)


if __name__ == "__main__":
    try:
        findings = main(Path(sys.argv[1]))
    except HeadLost as lost:
        print(f"HEAD LOST: {lost}", file=sys.stderr, flush=True)
        os._exit(HEAD_LOST)  # not exit(): Ray's exit hooks would wait 60 s for the dead GCS
    print(json.dumps(findings), flush=True)
