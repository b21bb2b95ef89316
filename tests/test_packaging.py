"""The two distributions, built as wheels the way the image installs them (not editable): each holds
its own packages and data, and declares what it needs."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


PIP_WHEEL = (sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation")
SOURCES = {  # what each build needs, copied: a build in the tree would leave build/ behind
    ".": ("pyproject.toml", "README.md", "models", "deployments", "serve_app"),
    "clients/python": ("pyproject.toml", "README.md", "superres_client"),
}


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, zipfile.ZipFile]:
    out = tmp_path_factory.mktemp("wheels")
    for where, names in SOURCES.items():
        project = tmp_path_factory.mktemp("src")
        for name in names:
            source = REPO / where / name
            if source.is_dir():
                shutil.copytree(
                    source, project / name, ignore=shutil.ignore_patterns("__pycache__")
                )
            else:
                shutil.copy(source, project / name)
        subprocess.run(
            [*PIP_WHEEL, "--wheel-dir", str(out), str(project)],
            check=True,
            capture_output=True,
            timeout=300,
        )
    return {path.name.split("-")[0]: zipfile.ZipFile(path) for path in out.glob("*.whl")}


def _metadata(wheel: zipfile.ZipFile) -> tuple[set[str], list[str]]:
    """(top-level packages, Requires-Dist lines without extras' requirements)."""
    tops = {n.split("/")[0] for n in wheel.namelist() if "/" in n and ".dist-info/" not in n}
    [meta] = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    requires = Parser().parsestr(wheel.read(meta).decode()).get_all("Requires-Dist") or []
    return tops, [r for r in requires if "extra ==" not in r]


def test_the_service_wheel_holds_the_service_and_its_web_page(
    wheels: dict[str, zipfile.ZipFile],
) -> None:
    tops, requires = _metadata(wheels["superres"])
    assert tops == {"models", "deployments", "serve_app"}  # no SDK, tests, devtools or bench
    names = set(wheels["superres"].namelist())
    assert {f"serve_app/web/{f}" for f in ("index.html", "app.js", "app.css")} <= names
    assert "superres-client==0.1.0" in requires


def test_the_sdk_wheel_holds_the_sdk_and_needs_httpx_and_pydantic_only(
    wheels: dict[str, zipfile.ZipFile],
) -> None:
    tops, requires = _metadata(wheels["superres_client"])
    assert tops == {"superres_client"}
    assert "superres_client/py.typed" in wheels["superres_client"].namelist()
    assert sorted(r.split(">")[0].split("<")[0] for r in requires) == ["httpx", "pydantic"]
    [entry] = [n for n in wheels["superres_client"].namelist() if n.endswith("entry_points.txt")]
    assert "superres = superres_client.cli:main" in wheels["superres_client"].read(entry).decode()
