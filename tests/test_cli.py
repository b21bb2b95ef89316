"""The ``superres`` command line against the real service, and ``--local`` in this process."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image as PILImage

from superres_client.cli import main
from tests.test_api import encode, noise

pytestmark = pytest.mark.serve


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def mixed_folder(root: Path) -> Path:
    folder = root / "in"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.png").write_bytes(encode(noise(10, 12, seed=61)))
    (folder / "b.jpg").write_bytes(encode(noise(9, 9, seed=62), "JPEG"))
    (folder / "sub" / "c.png").write_bytes(encode(noise(8, 16, seed=63)))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but nothing after")
    (folder / "notes.txt").write_text("not taken: not an image suffix")
    return folder


def test_a_folder_with_a_broken_image_then_resume(serve_app, tmp_path: Path, capsys) -> None:
    folder, out = mixed_folder(tmp_path), tmp_path / "out"
    argv = ["--server", serve_app.url, "upscale", str(folder), "-o", str(out), "--scale", "2"]
    code, stdout, stderr = run(capsys, *argv, "--json", "--concurrency", "3")
    assert code == 1, stderr
    results = {Path(r["input"]).name: r for r in json.loads(stdout)["results"]}
    assert set(results) == {"a.png", "b.jpg", "c.png", "broken.png"}
    assert results["broken.png"]["status"] == "failed" and results["broken.png"]["error"]
    for name, size in (("a.png", (24, 20)), ("b.jpg", (18, 18)), ("sub/c.png", (32, 16))):
        assert PILImage.open(out / name).size == size
        assert results[Path(name).name]["status"] == "done"
        assert results[Path(name).name]["mp_per_s"] > 0
    assert "broken.png" in stderr  # the plain progress lines (stderr is not a terminal)

    # again: the outputs that exist are skipped, the broken image fails again
    before = (out / "a.png").stat().st_mtime_ns
    code, stdout, _ = run(capsys, *argv)
    assert code == 1
    assert "3 skipped, 1 failed" in stdout and "broken.png" in stdout
    assert (out / "a.png").stat().st_mtime_ns == before


def test_files_format_overwrite_and_success_exit(serve_app, tmp_path: Path, capsys) -> None:
    image = tmp_path / "one.png"
    image.write_bytes(encode(noise(7, 7, seed=64)))
    argv = ["--server", serve_app.url, "upscale", str(image), "-o", str(tmp_path / "o")]
    code, stdout, _ = run(capsys, *argv, "--format", "webp", "--scale", "3")
    assert code == 0 and "1 done" in stdout
    assert PILImage.open(tmp_path / "o" / "one.webp").size == (21, 21)
    code, stdout, _ = run(capsys, *argv, "--format", "webp", "--overwrite", "--json")
    assert code == 0 and json.loads(stdout)["results"][0]["status"] == "done"
    assert PILImage.open(tmp_path / "o" / "one.webp").size == (28, 28)  # tiny-x4's own scale


def test_bad_options_stop_before_anything_is_sent(serve_app, tmp_path: Path, capsys) -> None:
    code, _, stderr = run(
        capsys, "--server", serve_app.url, "upscale", str(tmp_path), "-o", "x", "--scale", "99"
    )
    assert code == 2 and "scale" in stderr


def test_models_jobs_stats(serve_app, capsys, monkeypatch) -> None:
    monkeypatch.setenv("SUPERRES_URL", serve_app.url)
    code, out, _ = run(capsys, "models")
    assert code == 0 and "tiny-x4" in out
    code, out, _ = run(capsys, "models", "--json")
    assert any(m["name"] == "tiny-x4" for m in json.loads(out))
    code, out, _ = run(capsys, "jobs", "--json")
    jobs: list[dict[str, Any]] = json.loads(out)
    assert code == 0 and isinstance(jobs, list)
    code, out, _ = run(capsys, "jobs", "--active")
    assert code == 0 and out.startswith("id")
    code, out, _ = run(capsys, "stats")
    assert code == 0 and "upscaler" in json.loads(out)


def test_local_runs_models_in_process(tiny_weights, tmp_path: Path, capsys) -> None:
    image = tmp_path / "small.png"
    image.write_bytes(encode(noise(6, 5, seed=65)))
    tiny = tiny_weights["tiny-x4"]
    code, stdout, stderr = run(
        capsys,
        "upscale",
        str(image),
        "-o",
        str(tmp_path / "out"),
        "--local",
        "--model",
        "tiny-x4",
        "--custom-model",
        f"tiny-x4={tiny['path']}@{tiny['sha256']}",
        "--weights-dir",
        str(tmp_path / "weights"),
        "--backend",
        "torch",
        "--scale",
        "2",
        "--json",
    )
    assert code == 0, stderr
    assert json.loads(stdout)["results"][0]["status"] == "done"
    assert PILImage.open(io.BytesIO((tmp_path / "out" / "small.png").read_bytes())).size == (10, 12)


def test_the_cli_starts_without_torch() -> None:
    probe = "import sys, superres_client.cli; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"
