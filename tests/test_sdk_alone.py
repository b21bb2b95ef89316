"""The SDK installed alone: ``pip install ./clients/python`` into a fresh virtualenv brings httpx and
pydantic and nothing of the service (no models/, torch, Ray, numpy), and from there the client and
the ``superres`` command line work against the real service."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.test_api import encode, noise

REPO = Path(__file__).resolve().parent.parent
SERVICE_ONLY = ("models", "deployments", "serve_app", "torch", "ray", "numpy", "spandrel", "boto3")

pytestmark = pytest.mark.serve


class Venv:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.python = root / "bin" / "python"
        self.superres = root / "bin" / "superres"

    def run(self, *argv: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
        # Away from the repository (no models/ on sys.path) and without this venv's packages.
        env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
        return subprocess.run(
            [str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
        )


@pytest.fixture(scope="module")
def sdk_venv(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    venv = Venv(tmp_path_factory.mktemp("sdk-alone") / "venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv.root)], check=True, timeout=120)
    done = venv.run(
        venv.python, "-m", "pip", "install", "--quiet", REPO / "clients" / "python", cwd=venv.root
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return venv


def test_the_sdk_installs_without_the_service(sdk_venv: Venv) -> None:
    probe = (
        "import importlib.util, json, superres_client, superres_client.options\n"
        f"print(json.dumps([m for m in {SERVICE_ONLY!r} if importlib.util.find_spec(m)]))\n"
    )
    done = sdk_venv.run(sdk_venv.python, "-c", probe, cwd=sdk_venv.root)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
    listed = sdk_venv.run(sdk_venv.python, "-m", "pip", "list", "--format=json", cwd=sdk_venv.root)
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert {"superres-client", "httpx", "pydantic"} <= names and "superres" not in names


def test_a_receiver_verifies_webhooks_with_the_sdk_alone(sdk_venv: Venv) -> None:
    from tests import test_webhooks as spec  # the spec's reference vector

    script = textwrap.dedent(
        f"""
        from superres_client.webhooks import SignatureMismatchError, verify
        headers = {{"webhook-id": {spec.VECTOR_ID!r}, "webhook-timestamp":
            "{spec.VECTOR_TIMESTAMP}", "webhook-signature": {spec.VECTOR_SIGNATURE!r}}}
        verify({spec.VECTOR_SECRET!r}, headers, {spec.VECTOR_BODY!r}, now={spec.VECTOR_TIMESTAMP})
        try:
            verify({spec.VECTOR_SECRET!r}, headers, b"{{}}", now={spec.VECTOR_TIMESTAMP})
        except SignatureMismatchError:
            print("verified; a changed body refused")
        """
    )
    done = sdk_venv.run(sdk_venv.python, "-c", script, cwd=sdk_venv.root)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "verified; a changed body refused"


def test_the_sdk_alone_against_the_service(serve_app, sdk_venv: Venv, tmp_path: Path) -> None:
    (tmp_path / "in.png").write_bytes(encode(noise(12, 20, seed=71)))
    script = textwrap.dedent(
        f"""
        import json, sys
        from superres_client import Client, InvalidOptions
        with Client({serve_app.url!r}) as sr:
            try:
                sr.upscale("in.png", scale=9)  # refused here, by the server's own options model
                sys.exit("scale=9 was sent")
            except InvalidOptions as e:
                refused = str(e)
            direct = sr.upscale("in.png", scale=2, format="webp")
            job = sr.submit("in.png", scale=3).wait(timeout=120)
            print(json.dumps({{"refused": refused, "direct": [direct.width, direct.height,
                direct.format], "job": [job.width, job.height], "bytes": len(job.read())}}))
        """
    )
    done = sdk_venv.run(sdk_venv.python, "-c", script, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    got = json.loads(done.stdout)
    assert "scale" in got["refused"]
    assert got["direct"] == [40, 24, "webp"] and got["job"] == [60, 36] and got["bytes"] > 0


def test_the_cli_alone(serve_app, sdk_venv: Venv, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(encode(noise(10, 12, seed=72)))
    argv = (sdk_venv.superres, "--server", serve_app.url, "upscale", "in", "-o", "out")
    done = sdk_venv.run(*argv, "--scale", "2", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    [result] = json.loads(done.stdout)["results"]
    assert result["status"] == "done" and (tmp_path / "out" / "a.png").is_file()

    local = sdk_venv.run(*argv, "--local", "--overwrite", cwd=tmp_path)
    assert local.returncode != 0
    assert "pip install superres" in local.stdout + local.stderr
