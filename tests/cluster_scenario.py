"""A real two-node Ray cluster on this machine, losing the node that runs the Upscaler mid-job.

Run by tests/test_jobs_cluster.py in its own process (a driver connects to one cluster only):
``python -m tests.cluster_scenario WORKDIR`` prints one JSON line of findings. The head runs the
Ingress and the JobRunner; a second node (its own raylet, started with ``ray start --address``)
holds the custom resource the Upscaler needs. Everything started here is stopped here: each node
is a ``ray start --block`` process in its own session, killed by process group (never ``ray stop``,
which would end every Ray process on the machine).

Both nodes share this machine's address, so Serve runs its HTTP proxy on the head only: with a proxy
on each node the two share the port (SO_REUSEPORT) and a client's kept-alive connection may belong
to the node that is killed, dropped as on a real cluster, but by chance and not what is tested.
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
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).with_name("ray"))


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


def wait(predicate: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
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
    # which Ray's first start writes (on a fresh machine: a throwaway local start makes it, in a
    # process of its own, since Ray reads RAY_AUTH_MODE once, on import)
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_USAGE_STATS_ENABLED": "0"}
    if not (Path.home() / ".ray" / "auth_token").exists():
        throwaway = "import ray; ray.init(num_cpus=1, include_dashboard=False); ray.shutdown()"
        subprocess.run([sys.executable, "-c", throwaway], env=env, check=True)
    env["RAY_AUTH_MODE"] = "token"
    os.environ.update(env)
    import ray

    head = start_node(
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
    findings: dict[str, Any] = {}
    try:
        from ray import serve

        from models.settings import Settings
        from serve_app.app import AppArgs, build

        wait(lambda: _connect(ray, port), 90, "the head")
        worker = start_node(*worker_args, env=env, log=workdir / "worker.log")  # head answers
        wait(lambda: ray.cluster_resources().get("upscaler_node"), 60, "the second node")
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
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": http})
        serve.run(build(args, settings, options), name="cluster", route_prefix="/")
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
        )
        kill(worker)
        findings["progress_at_kill"] = seen
        findings["status_after_kill"] = job(client, job_id)["status"]
        worker = start_node(*worker_args, env=env, log=workdir / "worker-again.log")
        done = wait(
            lambda: (b := job(client, job_id))["status"] in ("succeeded", "failed") and b,
            300,
            "job",
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
                lambda i=i: (b := job(client, i))["status"] in ("succeeded", "failed") and b, 300, i
            )
            for i in queued
        ]
        findings["restart"] = [f["status"] for f in finished]
        serve.shutdown()
    except BaseException as exc:
        print(log_tails(workdir, Path(ray_tmp)), file=sys.stderr)  # before ray_tmp is removed
        print(f"--- {time.strftime('%H:%M:%S')} {exc!r}", file=sys.stderr)
        raise
    finally:
        # the driver lets go first: connected to a GCS killed under it, it waits 60 s, then aborts
        ray.shutdown()
        if worker is not None:
            kill(worker)
        kill(head)
        s3.stop()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    return findings


# Ray's own processes on each node, the likeliest culprits last (a failure shows the end)
ANSI = re.compile(r"\x1b\[[0-9;]*m")
RAY_LOGS = ("dashboard_agent", "log_monitor", "monitor", "raylet", "gcs_server", "ray_process_exit")


def log_tails(workdir: Path, ray_tmp: Path, lines: int = 25) -> str:
    """The ends of Ray's process logs and each ``ray start``'s output (a failure's first clues)."""
    paths = []
    for name in RAY_LOGS:  # not session_latest, a link to the same folder
        paths += sorted(p for p in ray_tmp.glob(f"*/session_2*/logs/{name}*") if p.is_file())
    paths += sorted(workdir.glob("*.log"))
    found = []
    for path in paths:
        text = ANSI.sub("", path.read_text(errors="replace"))
        if path.parent == workdir:  # ray start's banner ends where --block begins: skip it
            text = text.rpartition("Process exit logs will be saved to")[2].partition("\n")[2]
        tail = text.splitlines()[-lines:]
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
    print(json.dumps(main(Path(sys.argv[1]))), flush=True)
