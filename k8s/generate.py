"""Generate every derived config from ``configs/serve_config.yaml``, the one source of truth.

Written (never edit them by hand):

- ``configs/serve_config.gpu.yaml``: the Serve config with ``configs/gpu-overrides.yaml`` merged in;
- ``k8s/overlays/<overlay>/generated/serve-config.patch.yaml``: the RayService's ``serveConfigV2``;
- ``k8s/overlays/<overlay>/generated/weights-models.yaml``: the models the weights Job stages;
- ``k8s/base/generated/storage-jobs.yaml``: ``k8s/storage_jobs.py`` and ``k8s/minio_user.sh`` as a
  ConfigMap for the Jobs.

``python k8s/generate.py`` writes them; ``--check`` writes nothing and exits 1 when a committed file
differs (or the image's constraints no longer satisfy pyproject.toml); ``--lock`` rewrites
``k8s/image/constraints.txt`` from the installed environment.

Overrides merge into the base config key by key; ``applications`` merge by ``name`` and each app's
``deployments`` by ``name``; other lists are replaced; ``null`` removes a key.
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import re
import sys
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as `python k8s/generate.py`: make `k8s` and `models` importable
    sys.path.insert(0, str(REPO))

from k8s import ManifestError  # noqa: E402
from models.registry import ModelKind, Registry  # noqa: E402

SERVE_CONFIG = Path("configs/serve_config.yaml")
GPU_OVERRIDES = Path("configs/gpu-overrides.yaml")
GPU_CONFIG = Path("configs/serve_config.gpu.yaml")
JOBS_SCRIPT = Path("k8s/storage_jobs.py")
MINIO_USER_SCRIPT = Path("k8s/minio_user.sh")
JOBS_CONFIGMAP = Path("k8s/base/generated/storage-jobs.yaml")
CONSTRAINTS = Path("k8s/image/constraints.txt")
OWN_DISTRIBUTIONS = ("superres", "superres-client")
SDK_PYPROJECT = Path("clients/python/pyproject.toml")
# Overlay name -> the overrides applied on top of the base config (None: the base config as is).
OVERLAYS: dict[str, Path | None] = {"cpu": None, "gpu": GPU_OVERRIDES}
# In a pod the proxy must listen on the pod IP, whatever the single-machine config says.
K8S_OVERRIDES: dict[str, Any] = {"http_options": {"host": "0.0.0.0"}}
# The image installs the project with these extras (see Dockerfile).
IMAGE_EXTRAS = ("offline-weights",)
_FACE_KINDS = (ModelKind.FACE_RESTORE, ModelKind.FACE_DETECT)
_NAMED_LISTS = {"applications", "deployments"}
_SHA256 = re.compile(r"[0-9a-f]{64}")


# --- the Serve config ----------------------------------------------------------------------------


def merge_config(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` merged in (see the module doc); neither argument is modified."""
    return _merge(dict(copy.deepcopy(base)), overrides, path="")


def _merge(base: dict[str, Any], overrides: Mapping[str, Any], path: str) -> dict[str, Any]:
    for key, value in overrides.items():
        where = f"{path}.{key}" if path else str(key)
        if value is None:
            base.pop(key, None)
        elif key in _NAMED_LISTS and isinstance(value, list):
            base[key] = _merge_named(base.get(key) or [], value, where)
        elif isinstance(value, Mapping) and isinstance(base.get(key), dict):
            base[key] = _merge(base[key], value, where)
        else:
            base[key] = copy.deepcopy(value)
    return base


def _merge_named(base: list[Any], overrides: list[Any], path: str) -> list[Any]:
    merged = copy.deepcopy(base)
    index = {item.get("name"): i for i, item in enumerate(merged) if isinstance(item, dict)}
    for item in overrides:
        if not isinstance(item, Mapping) or not item.get("name"):
            raise ManifestError(f"{path}: every override entry needs a name, got {item!r}")
        name = item["name"]
        if name in index:
            merged[index[name]] = _merge(merged[index[name]], item, f"{path}[{name}]")
        elif path.endswith("applications") and "import_path" in item:
            merged.append(copy.deepcopy(dict(item)))  # a whole new application
        else:
            known = ", ".join(str(n) for n in index) or "none"
            raise ManifestError(f"{path}: no entry named {name!r} to override (known: {known})")
    return merged


def load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ManifestError(f"cannot read {path}: {e}") from e
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: expected a mapping at the top level")
    return data


def overlay_config(repo: Path, overlay: str) -> dict[str, Any]:
    """The Serve config embedded in ``overlay``'s RayService."""
    config = load_yaml(repo / SERVE_CONFIG)
    overrides = OVERLAYS[overlay]
    if overrides is not None:
        config = merge_config(config, load_yaml(repo / overrides))
    return merge_config(config, K8S_OVERRIDES)


def wanted_models(config: Mapping[str, Any], registry: Registry | None = None) -> list[str]:
    """Built-in models the config's apps may load, in config order.

    Custom models (``args.custom_models``) are left out: replicas fetch them from their pinned URL.
    """
    registry = registry or Registry()
    names: list[str] = []
    for app in config.get("applications") or []:
        args = app.get("args") or {}
        custom = {m.get("name") for m in args.get("custom_models") or []}
        wanted = [
            args.get("default_model"),
            *(args.get("models") or []),
            *(args.get("preload") or []),
        ]
        if args.get("face_enhance"):
            wanted += [n for kind in _FACE_KINDS for n in registry.names(kind)]
        for name in wanted:
            if name is None or name in custom or name in names:
                continue
            if name not in registry:
                raise ManifestError(f"app {app.get('name')!r}: unknown model {name!r}")
            names.append(registry.get(name).name)
    return names


def staged_models(config: Mapping[str, Any], registry: Registry | None = None) -> list[str]:
    """The wanted models a mirror can serve: those whose weights file has a sha256 pin.

    Replicas never download an unpinned file, from a mirror or elsewhere; they convert such a model
    from its offline (ncnn) package instead, so staging it would be wasted.
    """
    registry = registry or Registry()
    return [
        name
        for name in wanted_models(config, registry)
        if _SHA256.fullmatch((registry.get(name).weights.sha256 or "").lower())
    ]


# --- rendering ------------------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """Block style everywhere and multi-line strings as literal blocks, for readable diffs."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=1 << 16, allow_unicode=True)


def _header(*sources: Path) -> str:
    names = " + ".join(str(s) for s in sources)
    return f"# GENERATED from {names} by `make manifests` (k8s/generate.py): do not edit.\n"


def _sources(overlay: str) -> tuple[Path, ...]:
    overrides = OVERLAYS[overlay]
    return (SERVE_CONFIG,) if overrides is None else (SERVE_CONFIG, overrides)


def _configmap(name: str, component: str, data: dict[str, str]) -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": "superres", "app.kubernetes.io/component": component}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": labels},
        "data": data,
    }


def _overlay_files(repo: Path, overlay: str) -> dict[Path, str]:
    config = overlay_config(repo, overlay)
    folder = Path("k8s/overlays") / overlay / "generated"
    header = _header(*_sources(overlay))
    patch = [{"op": "add", "path": "/spec/serveConfigV2", "value": dump_yaml(config)}]
    staged = staged_models(config)
    unpinned = [n for n in wanted_models(config) if n not in staged]
    if unpinned:
        header += (
            f"# Not staged, no sha256 pin (replicas use the offline source): {' '.join(unpinned)}\n"
        )
    weights = _configmap("superres-weights", "weights", {"MODELS": " ".join(staged)})
    return {
        folder / "serve-config.patch.yaml": _header(*_sources(overlay)) + dump_yaml(patch),
        folder / "weights-models.yaml": header + dump_yaml(weights),
    }


def generated_files(repo: Path) -> dict[Path, str]:
    """Every generated file (path relative to ``repo``) and its content."""
    gpu = merge_config(load_yaml(repo / SERVE_CONFIG), load_yaml(repo / GPU_OVERRIDES))
    files = {
        GPU_CONFIG: _header(SERVE_CONFIG, GPU_OVERRIDES)
        + "# For one GPU machine: `serve run configs/serve_config.gpu.yaml`.\n"
        + dump_yaml(gpu)
    }
    for overlay in OVERLAYS:
        files.update(_overlay_files(repo, overlay))
    scripts = {path.name: (repo / path).read_text() for path in (JOBS_SCRIPT, MINIO_USER_SCRIPT)}
    files[JOBS_CONFIGMAP] = _header(JOBS_SCRIPT, MINIO_USER_SCRIPT) + dump_yaml(
        _configmap("superres-storage-jobs", "storage", scripts)
    )
    return files


def drift(repo: Path) -> list[str]:
    """Why the committed files differ from what the sources generate (empty: in sync)."""
    problems = []
    for path, content in generated_files(repo).items():
        target = repo / path
        if not target.is_file():
            problems.append(f"{path}: missing")
        elif target.read_text() != content:
            problems.append(f"{path}: differs from what its sources generate")
    problems += constraint_problems(repo)
    return problems


def write(repo: Path) -> list[Path]:
    """Write the generated files that changed; returns them."""
    changed = []
    for path, content in generated_files(repo).items():
        target = repo / path
        if not target.is_file() or target.read_text() != content:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
            changed.append(path)
    return changed


# --- the image's pinned dependencies -------------------------------------------------------------

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")


def runtime_requirements(repo: Path) -> list[Requirement]:
    """The runtime dependencies of the service and of the SDK (the image installs both), plus the
    extras the image installs."""
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    sdk = tomllib.loads((repo / SDK_PYPROJECT).read_text())["project"]
    extras = project.get("optional-dependencies", {})
    lines = [*project["dependencies"], *sdk["dependencies"]]
    lines += [r for e in IMAGE_EXTRAS for r in extras[e]]
    return [Requirement(line) for line in lines]


def lock_from_environment(requirements: Iterable[Requirement]) -> dict[str, str]:
    """Installed version of every distribution the requirements pull in (the closure)."""
    pins: dict[str, str] = {}
    seen: set[tuple[str, str]] = set()
    todo = [(r, "") for r in requirements]  # (requirement, the extra its markers are read under)
    while todo:
        req, parent_extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": parent_extra}):
            continue
        name = str(canonicalize_name(req.name))
        for extra in ("", *sorted(req.extras)):
            if (name, extra) in seen:
                continue
            seen.add((name, extra))
            try:
                dist = importlib.metadata.distribution(req.name)
            except importlib.metadata.PackageNotFoundError as e:
                raise ManifestError(
                    f"{req.name} is not installed: install the project first"
                ) from e
            pins[name] = dist.version.split("+", 1)[0]  # a local label (+cu130) names an index
            todo += [(Requirement(line), extra) for line in dist.requires or []]
    return dict(sorted(pins.items()))


def read_constraints(path: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        match = _PIN.match(line.strip())
        if match:
            pins[str(canonicalize_name(match.group(1)))] = match.group(2)
    return pins


def constraint_problems(repo: Path) -> list[str]:
    """Runtime dependencies missing from the image's constraints or pinned outside their range."""
    path = repo / CONSTRAINTS
    if not path.is_file():
        return [f"{CONSTRAINTS}: missing (run `python k8s/generate.py --lock`)"]
    pins = read_constraints(path)
    problems = []
    for req in runtime_requirements(repo):
        if canonicalize_name(req.name) in OWN_DISTRIBUTIONS:
            continue  # built from this tree by the Dockerfile
        pinned = pins.get(canonicalize_name(req.name))
        if pinned is None:
            problems.append(f"{CONSTRAINTS}: {req.name} is not pinned")
        elif not req.specifier.contains(pinned, prereleases=True):
            problems.append(f"{CONSTRAINTS}: {req.name}=={pinned} is outside {req.specifier}")
    return problems


def write_lock(repo: Path) -> Path:
    pins = lock_from_environment(runtime_requirements(repo))
    for name in OWN_DISTRIBUTIONS:
        pins.pop(name, None)
    lines = [
        "# GENERATED by `python k8s/generate.py --lock` from the environment the tests ran in:",
        "# the versions the image installs (`pip install -c` in the Dockerfile). Local labels such",
        "# as +cu130 are left out: the pip index picks the CUDA build (see docs/kubernetes.md).",
        *(f"{name}=={version}" for name, version in pins.items()),
    ]
    (repo / CONSTRAINTS).parent.mkdir(parents=True, exist_ok=True)
    (repo / CONSTRAINTS).write_text("\n".join(lines) + "\n")
    return CONSTRAINTS


# --- command line ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 if a generated file drifted")
    mode.add_argument("--lock", action="store_true", help="rewrite the image's constraints")
    parser.add_argument("--repo", type=Path, default=REPO, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        if args.lock:
            print(f"wrote {write_lock(args.repo)}")
            return 0
        if args.check:
            problems = drift(args.repo)
            for problem in problems:
                print(problem, file=sys.stderr)
            if problems:
                print("run `make manifests` (python k8s/generate.py) and commit", file=sys.stderr)
            return 1 if problems else 0
        for path in write(args.repo):
            print(f"wrote {path}")
        for problem in constraint_problems(args.repo):
            print(problem, file=sys.stderr)
    except ManifestError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
