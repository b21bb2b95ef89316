"""``make run``: a local S3 server, the default weights, then ``serve run`` — and all of it stopped
again on Ctrl-C (or SIGTERM), without touching anything this process did not start.

Usage: ``python -m devtools.run [--config configs/serve_config.yaml] [--s3-port 8333]``.
Set ``SUPERRES_S3_ENDPOINT_URL`` (and keys) to use an existing S3/MinIO instead of SeaweedFS.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import FrameType

import yaml

from devtools.local_s3 import LocalS3, load_or_create_credentials, start_local_s3
from devtools.retention import apply_retention
from models.provider import ModelProvider
from models.registry import Registry
from models.s3 import ResultStore
from models.settings import Settings

REPO = Path(__file__).resolve().parent.parent
RUN_DIR = REPO / ".run"


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def _http_port(config: Path) -> tuple[str, int]:
    options = yaml.safe_load(config.read_text()).get("http_options", {})
    return str(options.get("host", "127.0.0.1")), int(options.get("port", 8000))


def _wait_ready(url: str, serve: subprocess.Popen[bytes], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and serve.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=5) as response:
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(1)
    return False


AUTH_OFF = """
!!! API keys are OFF: anyone who can reach this port can use the service.
!!! To turn them on: .venv/bin/python -m serve_app keys create NAME --file .run/api-keys
!!! then start again with SUPERRES_API_KEYS_FILE=.run/api-keys (send Authorization: Bearer KEY).
"""


def _banner(url: str, auth: bool) -> str:
    key = ' -H "Authorization: Bearer $KEY"' if auth else ""
    return f"""
superres is ready at {url}   (API docs: {url}/docs)

  curl{key} -F file=@photo.jpg "{url}/v1/upscale?scale=4"
  curl{key} "{url}/v1/models"

The JSON answer holds a presigned "url" to download the result. Ctrl-C stops everything.
{"" if auth else AUTH_OFF}"""


def _stop_serve(serve: subprocess.Popen[bytes]) -> None:
    if serve.poll() is not None:
        return
    os.killpg(serve.pid, signal.SIGINT)  # serve run shuts down the app and its Ray instance
    try:
        serve.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(serve.pid, signal.SIGKILL)
        serve.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.run", description=__doc__)
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "serve_config.yaml")
    parser.add_argument("--s3-port", type=int, default=int(os.environ.get("LOCAL_S3_PORT", 8333)))
    parser.add_argument("--ready-timeout", type=float, default=900.0)
    args = parser.parse_args(argv)

    env = os.environ  # what we set here is inherited by serve run and its replicas
    env.setdefault("RAY_TMPDIR", str(RUN_DIR / "ray"))
    env.setdefault("SUPERRES_WEIGHTS_DIR", str(RUN_DIR / "weights"))
    Path(env["RAY_TMPDIR"]).mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _raise_stop)

    s3: LocalS3 | None = None
    serve: subprocess.Popen[bytes] | None = None
    try:
        if "SUPERRES_S3_ENDPOINT_URL" not in env:
            data_dir = RUN_DIR / "s3"
            key, secret = load_or_create_credentials(data_dir)
            print(f"starting the local S3 server (SeaweedFS) on port {args.s3_port} ...")
            s3 = start_local_s3(
                data_dir, s3_port=args.s3_port, access_key_id=key, secret_access_key=secret
            )
            env.update(s3.env())
        settings = Settings()
        if s3 is not None:  # our own SeaweedFS: what jobs leave expires as in the cluster
            ResultStore(settings.storage()).ensure_bucket()
            apply_retention(settings)
        if settings.api_keys_file is None:
            print(AUTH_OFF, flush=True)
        default_model = _default_model(args.config)
        print(f"fetching the weights of {default_model} into {settings.weights_dir} ...")
        for weights in ModelProvider(Registry(), settings.weights_store()).fetch(default_model):
            print(f"  {weights.path.name}: from {weights.origin} ({weights.detail})")

        host, port = _http_port(args.config)
        url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
        serve_bin = str(Path(sys.executable).with_name("serve"))
        print(f"starting Ray Serve: serve run {args.config} ...")
        serve = subprocess.Popen(
            [serve_bin, "run", str(args.config)],
            cwd=REPO,
            start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        if _wait_ready(url, serve, args.ready_timeout):
            print(_banner(url, auth=bool(settings.api_keys_file)), flush=True)
        else:
            print(f"the app did not become ready at {url}/readyz; see the log above", flush=True)
        return serve.wait()
    except (KeyboardInterrupt, _Stop):
        print("\nstopping ...", flush=True)
        return 0
    finally:
        if serve is not None:
            _stop_serve(serve)
        if s3 is not None:
            s3.stop()


def _default_model(config: Path) -> str:
    apps = yaml.safe_load(config.read_text())["applications"]
    return str(apps[0].get("args", {}).get("default_model", "realesrgan-x4plus"))


if __name__ == "__main__":
    sys.exit(main())
