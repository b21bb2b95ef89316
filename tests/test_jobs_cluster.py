"""On a real multi-node Ray cluster: losing the node that runs a job, and restarting the app."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def test_jobs_survive_node_loss_and_an_application_restart(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tests.cluster_scenario", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-20000:]
    findings = json.loads(done.stdout.strip().splitlines()[-1])
    assert findings["status_after_kill"] in ("running", "queued")
    seen = findings["progress_at_kill"]  # the premise: the node died with the job half done
    assert 0 < seen["done"] < seen["total"], findings
    assert findings["node_loss"]["status"] == "succeeded", findings
    assert findings["node_loss"]["attempts"] >= 2  # it was running when its node died
    assert findings["node_loss_results"] == 1  # retried, never duplicated
    assert findings["restart"] == ["succeeded", "succeeded"]
