"""The structure the code promises: imports point one way, the Ingress stays light, modules stay short."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Each layer may import only those before it. The SDK's contract modules (SHARED) are the bottom
# layer: the service imports them, and the SDK's distribution holds them so that it installs alone.
LAYERS = ("superres_client", "models", "deployments", "serve_app")
WHERE = {"superres_client": "clients/python/superres_client"}
# The SDK modules the service may import: the API's contracts (request options, webhook format).
SHARED = frozenset({"superres_client.options", "superres_client.webhooks"})
LOCAL = "_local.py"  # `superres upscale --local`: the SDK module that runs models/ (lazily)
HEAVY = ("torch", "spandrel", "cv2", "torchvision")
MAX_LINES = 300


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def upward_imports(root: Path) -> list[str]:
    found = []
    for rank, layer in enumerate(LAYERS):
        above = set(LAYERS[rank + 1 :]) | {"devtools"}
        for path in sorted((root / WHERE.get(layer, layer)).rglob("*.py")):
            if layer == "superres_client" and path.name == LOCAL:
                continue
            for name in sorted(_imports(path)):
                top = name.split(".")[0]
                if top in above or (top == "superres_client" != layer and name not in SHARED):
                    found.append(f"{path.relative_to(root)} imports {name}")
    return found


def test_layers_import_only_downward() -> None:
    assert upward_imports(REPO) == []


def test_the_layer_check_sees_an_upward_import(tmp_path: Path) -> None:
    for layer in LAYERS:
        (tmp_path / WHERE.get(layer, layer)).mkdir(parents=True)
    (tmp_path / "models" / "bad.py").write_text("from serve_app.settings import Settings\n")
    (tmp_path / "deployments" / "worse.py").write_text("import devtools.run\n")
    (tmp_path / "serve_app" / "sdk.py").write_text("from superres_client.client import Client\n")
    (tmp_path / WHERE["superres_client"] / "cli.py").write_text("from models import pipeline\n")
    (tmp_path / WHERE["superres_client"] / LOCAL).write_text("from models import pipeline\n")
    (tmp_path / "serve_app" / "fine.py").write_text("from superres_client.options import X\n")
    assert upward_imports(tmp_path) == [
        "clients/python/superres_client/cli.py imports models",
        "models/bad.py imports serve_app.settings",
        "deployments/worse.py imports devtools.run",
        "serve_app/sdk.py imports superres_client.client",
    ]


@pytest.mark.parametrize("module", sorted(SHARED))
def test_the_contracts_need_only_pydantic_and_the_standard_library(module: str) -> None:
    path = REPO / WHERE["superres_client"] / f"{module.rsplit('.', 1)[1]}.py"
    imports = {n.split(".")[0] for n in _imports(path)}
    assert imports <= {"pydantic", *sys.stdlib_module_names}, imports


def test_the_ingress_loads_no_torch_spandrel_or_opencv() -> None:
    code = (
        "import sys, serve_app.ingress, serve_app.upload, serve_app.errors\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


@pytest.mark.parametrize("layer", ["serve_app", "deployments"])
def test_service_modules_are_short(layer: str) -> None:
    long = {
        str(p.relative_to(REPO)): n
        for p in sorted((REPO / layer).glob("*.py"))
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}
