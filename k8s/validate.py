"""Offline validation of the rendered overlays (``kubectl kustomize``): schemas, Serve, consistency.

- ``ray.io`` kinds against the KubeRay CRD schemas, strictly: an unknown or misspelled key fails;
- core kinds (and the pod templates inside a RayService) against the Kubernetes schemas shipped by
  ``kubernetes-validate``, in strict mode;
- ``serveConfigV2`` through Ray's ``ServeDeploySchema`` and ``AutoscalingConfig``, unknown keys
  included (Ray's models ignore them), and each application's ``args`` and ``user_config`` through
  the app's own models (``AppArgs``, ``UpscalerConfig``, ``FaceConfig``);
- what no schema sees: that the worker groups can hold every replica at ``max_replicas``, object
  store < /dev/shm < memory, requests = limits, secrets only through ``secretKeyRef``, references
  to ConfigMaps, Secrets and Services that exist, and the public S3 endpoint behind the Ingress;
- the hardening rules of k8s/security.py (non-root, read-only root, no capabilities, seccomp, no
  service account tokens, pinned images) and k8s/access.py (MinIO's NetworkPolicy, the Ray pods'
  limited S3 user, API keys on);
- the durability and retention rules of k8s/durability.py (GCS fault tolerance on a persistent
  Redis that only the Ray head reaches; the results bucket's retention settings).

``python k8s/validate.py [OVERLAY ...]`` prints the problems of each overlay and exits 1 if any.
"""

from __future__ import annotations

import argparse
import copy
import functools
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import kubernetes_validate.utils
import yaml
from referencing import Registry, Resource

REPO = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as `python k8s/validate.py`
    sys.path.insert(0, str(REPO))

from k8s import ManifestError  # noqa: E402
from k8s.access import access_problems  # noqa: E402
from k8s.durability import durability_problems  # noqa: E402
from k8s.render import render, resource_id  # noqa: E402
from k8s.security import security_problems  # noqa: E402

K8S_VERSION = "1.33"  # the oldest Kubernetes the manifests target
APP_IMPORT_PATH = "serve_app.app:build_app"  # our application (others' are Ray's business)
# The Secrets an operator creates (docs/kubernetes.md) and their keys; an overlay may ship them.
S3_KEYS = frozenset({"access-key-id", "secret-access-key"})
SECRETS: dict[str, frozenset[str]] = {
    "superres-s3": S3_KEYS,  # MinIO's root user: MinIO and the storage Jobs
    "superres-s3-app": S3_KEYS,  # the limited MinIO user of the Ray pods
    "superres-api-keys": frozenset({"api-keys"}),  # the hashed API keys
    "superres-redis": frozenset({"password"}),  # Redis of the GCS fault tolerance
    "superres-webhook": frozenset({"secret"}),  # signs job webhooks (optional)
}
OVERLAYS_DIR = REPO / "k8s" / "overlays"
_SECRET_LIKE = re.compile(r"SECRET|PASSWORD|ACCESS_KEY|TOKEN", re.IGNORECASE)
_QUANTITY = re.compile(r"^([0-9.]+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_SUFFIX = {
    "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}  # fmt: skip


def crd_folder(repo: Path = REPO) -> Path:
    """Where the KubeRay CRDs are kept, next to the repository (never copied into it)."""
    return repo.parent / "shared" / "kuberay-crds"


# --- CRD schemas ---------------------------------------------------------------------------------


def strict_schema(schema: Any) -> Any:
    """A copy where every object schema with ``properties`` refuses other keys, except where
    ``x-kubernetes-preserve-unknown-fields`` keeps a subtree open."""
    if not isinstance(schema, dict) or schema.get("x-kubernetes-preserve-unknown-fields"):
        return copy.deepcopy(schema)
    out = dict(schema)
    for key in ("items", "additionalProperties", "not"):
        if isinstance(schema.get(key), dict):
            out[key] = strict_schema(schema[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if isinstance(schema.get(key), list):
            out[key] = [strict_schema(s) for s in schema[key]]
    if "properties" in schema:
        out["properties"] = {k: strict_schema(v) for k, v in schema["properties"].items()}
        out.setdefault("additionalProperties", False)
    return out


class CrdSchemas:
    """Strict validators for every served version of the CRDs in a folder."""

    def __init__(self, folder: Path) -> None:
        self._validators: dict[tuple[str, str], jsonschema.protocols.Validator] = {}
        for path in sorted(folder.glob("*.yaml")):
            crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
            if not isinstance(crd, dict) or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if not version.get("served", True):
                    continue
                schema = strict_schema(version["schema"]["openAPIV3Schema"])
                key = (f"{group}/{version['name']}", kind)
                self._validators[key] = jsonschema.Draft4Validator(schema)

    def validate(self, resource: Mapping[str, Any]) -> list[str]:
        key = (str(resource.get("apiVersion")), str(resource.get("kind")))
        validator = self._validators.get(key)
        if validator is None:
            return [f"{resource_id(resource)}: no CRD schema for {key[0]} {key[1]}"]
        errors = sorted(validator.iter_errors(resource), key=lambda e: list(map(str, e.path)))
        return [f"{resource_id(resource)}: {_path(e.path)}: {e.message}" for e in errors]


def _path(parts: Any) -> str:
    return "/".join(str(p) for p in parts) or "(top)"


# --- core kinds ----------------------------------------------------------------------------------


@functools.cache
def _core_validator(api_version: str, kind: str, version: str) -> jsonschema.protocols.Validator:
    """The strict schema of a core kind, as ``kubernetes_validate.validate`` builds it, built once."""
    utils = kubernetes_validate.utils
    shipped = {v for v in utils.all_versions() if utils.major_minor(v) == version}
    if len(shipped) != 1:
        raise ManifestError(f"kubernetes-validate ships no schemas for Kubernetes {version}")
    (full,) = shipped
    folder = f"kubernetes-json-schema/v{full}-local-strict"
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    try:
        schema = utils.schema_contents(f"{folder}/{kind.lower()}-{group_version}.json", version)
    except FileNotFoundError:
        raise ManifestError(f"no Kubernetes {version} schema for {api_version} {kind}") from None
    definitions = utils.schema_contents(f"{folder}/_definitions.json", version)
    registry = Resource.from_contents(schema) @ Registry()
    registry = Resource.from_contents(definitions) @ registry
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validate_core(resource: Mapping[str, Any], version: str = K8S_VERSION) -> list[str]:
    """Problems of a core resource against the strict schemas of Kubernetes ``version``."""
    try:
        validator = _core_validator(
            str(resource.get("apiVersion")), str(resource.get("kind")), version
        )
    except ManifestError as e:
        return [f"{resource_id(resource)}: {e}"]
    errors = sorted(validator.iter_errors(dict(resource)), key=lambda e: list(map(str, e.path)))
    return [f"{resource_id(resource)}: {_path(e.path)}: {e.message}" for e in errors]


def pod_templates(resource: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(where, template) of every pod template of a RayService or RayCluster."""
    spec = resource.get("spec") or {}
    cluster = spec.get("rayClusterConfig", spec)
    head = (cluster.get("headGroupSpec") or {}).get("template")
    if head is not None:
        yield "head", head
    for group in cluster.get("workerGroupSpecs") or []:
        yield f"workers {group.get('groupName')}", group.get("template") or {}


def validate_pod_templates(resource: Mapping[str, Any]) -> list[str]:
    problems = []
    for where, template in pod_templates(resource):
        wrapper = {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": "check"},
            "template": template,
        }
        problems += [f"{resource_id(resource)} {where}: {p}" for p in validate_core(wrapper)]
    return problems


# --- the embedded Serve config -------------------------------------------------------------------


def serve_config_problems(text: str) -> list[str]:
    """Problems of a Serve config, as Ray reads it, plus the unknown keys Ray would ignore."""
    import pydantic
    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import ServeDeploySchema

    try:
        data = yaml.safe_load(text)
        schema = ServeDeploySchema.model_validate(data)
    except yaml.YAMLError as e:
        return [f"serveConfigV2: not YAML: {e}"]
    except pydantic.ValidationError as e:
        return [f"serveConfigV2: {_pydantic_errors(e)}"]
    problems = _unknown_keys(schema, data, "serveConfigV2")
    for app in data.get("applications") or []:
        for dep in app.get("deployments") or []:
            where = f"serveConfigV2: {app.get('name')}.{dep.get('name')}.autoscaling_config"
            auto = dep.get("autoscaling_config")
            if not isinstance(auto, dict):
                continue
            try:
                parsed = AutoscalingConfig.model_validate(auto)
            except pydantic.ValidationError as e:
                problems.append(f"{where}: {_pydantic_errors(e)}")
                continue
            problems += _unknown_keys(parsed, auto, where)
            max_ongoing = dep.get("max_ongoing_requests", 5)  # Serve's default
            if parsed.target_ongoing_requests > max_ongoing:
                problems.append(
                    f"{where}: target_ongoing_requests {parsed.target_ongoing_requests} is above "
                    f"max_ongoing_requests {max_ongoing}: the deployment would never scale up"
                )
    return problems + app_problems(data)


def app_problems(config: Mapping[str, Any]) -> list[str]:
    """Our application's ``args`` and ``user_config`` values, through the app's own models."""
    import pydantic

    from deployments.config import FaceConfig, UpscalerConfig
    from serve_app.app import AppArgs

    user_configs: dict[str, type[pydantic.BaseModel]] = {
        "Upscaler": UpscalerConfig,
        "FaceRestorer": FaceConfig,
    }
    problems = []
    for app in config.get("applications") or []:
        if app.get("import_path") != APP_IMPORT_PATH:
            continue
        where = f"serveConfigV2: {app.get('name')}"
        try:
            AppArgs.model_validate(app.get("args") or {})
        except pydantic.ValidationError as e:
            problems.append(f"{where}.args: {_pydantic_errors(e)}")
        for dep in app.get("deployments") or []:
            model = user_configs.get(dep.get("name"))
            if model is None or "user_config" not in dep:
                continue
            try:
                model.model_validate(dep["user_config"])
            except pydantic.ValidationError as e:
                problems.append(f"{where}.{dep['name']}.user_config: {_pydantic_errors(e)}")
    return problems


def _pydantic_errors(error: Any) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in error.errors()
    )


def _unknown_keys(model: Any, raw: Any, where: str) -> list[str]:
    if not isinstance(raw, dict):
        return []
    fields = type(model).model_fields
    names = set(fields) | {f.alias for f in fields.values() if f.alias}
    problems = [f"{where}: unknown key {key!r}" for key in raw if key not in names]
    for key, value in raw.items():
        attr = getattr(model, key, None) if key in fields else None
        if hasattr(type(attr), "model_fields"):
            problems += _unknown_keys(attr, value, f"{where}.{key}")
        elif isinstance(attr, list) and isinstance(value, list):
            for i, (item, raw_item) in enumerate(zip(attr, value, strict=False)):
                if hasattr(type(item), "model_fields"):
                    problems += _unknown_keys(item, raw_item, f"{where}.{key}[{i}]")
    return problems


# --- consistency ---------------------------------------------------------------------------------


def parse_quantity(value: Any) -> float:
    """A Kubernetes quantity ("500m", "48Gi", 2) as a number."""
    match = _QUANTITY.match(str(value))
    if match is None:
        raise ManifestError(f"not a quantity: {value!r}")
    return float(match.group(1)) * _SUFFIX.get(match.group(2) or "", 1)


def _containers(template: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list((template.get("spec") or {}).get("containers") or [])


def _all_containers(resource: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    def walk(node: Any) -> Iterator[dict[str, Any]]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("containers", "initContainers") and isinstance(value, list):
                    yield from value
                else:
                    yield from walk(value)
        elif isinstance(node, list):
            for item in node:
                yield from walk(item)

    yield from walk(resource)


def _ray_groups(cluster: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any], int]]:
    """(name, group spec, most pods) of the head (1 pod) and every worker group."""
    yield "head", cluster.get("headGroupSpec") or {}, 1
    for group in cluster.get("workerGroupSpecs") or []:
        yield f"workers {group.get('groupName')}", group, int(group.get("maxReplicas", 0))


def _pod_capacity(group: Mapping[str, Any]) -> tuple[float, float]:
    """(CPUs, GPUs) Ray sees in one pod of the group: rayStartParams, else the container limits."""
    params = group.get("rayStartParams") or {}
    containers = _containers(group.get("template") or {}) or [{}]
    limits = (containers[0].get("resources") or {}).get("limits") or {}
    cpus = params.get("num-cpus", limits.get("cpu", 0))
    gpus = params.get("num-gpus", limits.get("nvidia.com/gpu", 0))
    return parse_quantity(cpus), parse_quantity(gpus)


def _replica_demands(config: Mapping[str, Any]) -> list[tuple[str, float, float]]:
    """(deployment, CPUs, GPUs) of every replica at max_replicas (of a valid Serve config)."""
    from ray.serve.config import AutoscalingConfig

    demands = []
    for app in config.get("applications") or []:
        for dep in app.get("deployments") or []:
            options = dep.get("ray_actor_options") or {}
            if dep.get("autoscaling_config"):
                count = AutoscalingConfig.model_validate(dep["autoscaling_config"]).max_replicas
            elif dep.get("num_replicas") == "auto":
                count = AutoscalingConfig.default().max_replicas
            else:
                count = int(dep.get("num_replicas", 1))
            cpus, gpus = float(options.get("num_cpus", 1)), float(options.get("num_gpus", 0))
            demands += [(f"{app.get('name')}.{dep.get('name')}", cpus, gpus)] * count
    return demands


def capacity_problems(rayservice: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
    """Replicas at max_replicas that no pod (first fit, largest first) could hold."""
    cluster = rayservice["spec"]["rayClusterConfig"]
    sizes = [_pod_capacity(group) for _, group, count in _ray_groups(cluster) for _ in range(count)]
    pods = [list(size) for size in sizes]  # what is left in each pod
    problems = []
    for deployment, cpus, gpus in sorted(_replica_demands(config), key=lambda d: (-d[2], -d[1])):
        pod = next((p for p in pods if p[0] >= cpus - 1e-9 and p[1] >= gpus - 1e-9), None)
        if pod is None:
            fits = any(c >= cpus and g >= gpus for c, g in sizes)
            why = "the pods are full at max_replicas" if fits else "no pod is that large"
            problems.append(
                f"{resource_id(rayservice)}: a {deployment} replica ({cpus} CPU, {gpus} GPU) "
                f"finds no room: {why}"
            )
            continue
        pod[0] -= cpus
        pod[1] -= gpus
    return sorted(set(problems))


def memory_problems(rayservice: Mapping[str, Any]) -> list[str]:
    """Object store < /dev/shm (memory-backed) < memory limit; requests = limits; no probes."""
    cluster = rayservice["spec"]["rayClusterConfig"]
    problems = []
    autoscaler = (cluster.get("autoscalerOptions") or {}).get("resources") or {}
    if autoscaler.get("requests") != autoscaler.get("limits"):
        problems.append(f"{resource_id(rayservice)} autoscaler: requests must equal limits")
    for name, group, _ in _ray_groups(cluster):
        where = f"{resource_id(rayservice)} {name}"
        template = group.get("template") or {}
        containers = _containers(template)
        if not containers:
            problems.append(f"{where}: no container")
            continue
        container, resources = containers[0], containers[0].get("resources") or {}
        if resources.get("requests") != resources.get("limits"):
            problems.append(f"{where}: resource requests must equal limits")
        if "readinessProbe" in container or "livenessProbe" in container:
            problems.append(f"{where}: leave the probes to KubeRay (it checks Serve's health)")
        mounts = {m.get("name"): m.get("mountPath") for m in container.get("volumeMounts") or []}
        volumes = {v.get("name"): v for v in (template.get("spec") or {}).get("volumes") or []}
        shm_name = next((n for n, path in mounts.items() if path == "/dev/shm"), None)
        shm = (volumes.get(shm_name) or {}).get("emptyDir") or {}
        if shm.get("medium") != "Memory" or "sizeLimit" not in shm:
            problems.append(f"{where}: mount an emptyDir {{medium: Memory, sizeLimit}} at /dev/shm")
            continue
        store = (group.get("rayStartParams") or {}).get("object-store-memory")
        memory = (resources.get("limits") or {}).get("memory")
        if store is None or memory is None:
            problems.append(f"{where}: set rayStartParams.object-store-memory and a memory limit")
        elif not float(store) < parse_quantity(shm["sizeLimit"]) < parse_quantity(memory):
            problems.append(
                f"{where}: need object-store-memory ({store}) < /dev/shm ({shm['sizeLimit']}) "
                f"< memory limit ({memory})"
            )
    return problems


def rendered_secrets(resources: Sequence[Mapping[str, Any]]) -> dict[str, set[str]]:
    return {
        r["metadata"]["name"]: set(r.get("data") or {}) | set(r.get("stringData") or {})
        for r in resources
        if r.get("kind") == "Secret"
    }


def known_secrets(resources: Sequence[Mapping[str, Any]]) -> dict[str, frozenset[str] | set[str]]:
    """Secret name -> its keys: the Secrets an operator creates, and those an overlay ships."""
    return {**SECRETS, **rendered_secrets(resources)}


def secret_problems(resources: Sequence[Mapping[str, Any]]) -> list[str]:
    """Secret-like env vars come from secretKeyRef only; every Secret key read exists."""
    problems = []
    secrets = rendered_secrets(resources)
    for secret, keys in secrets.items():
        if secret in SECRETS and keys != SECRETS[secret]:
            problems.append(
                f"Secret {secret}: keys {sorted(keys)}, expected {sorted(SECRETS[secret])}"
            )
    known = known_secrets(resources)
    for resource in resources:
        if resource.get("kind") == "ConfigMap":
            problems += [
                f"{resource_id(resource)}: {key} looks secret: keep it in a Secret"
                for key in resource.get("data") or {}
                if _SECRET_LIKE.search(key)
            ]
        for container in _all_containers(resource):
            for env in container.get("env") or []:
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                where = f"{resource_id(resource)} {container.get('name')} {env.get('name')}"
                if ref is None:
                    if _SECRET_LIKE.search(str(env.get("name"))):
                        problems.append(f"{where}: inlined; use valueFrom.secretKeyRef")
                    continue
                if ref.get("key") not in known.get(ref.get("name"), set()):
                    problems.append(
                        f"{where}: no key {ref.get('key')!r} in Secret {ref.get('name')}"
                    )
        for volume in _secret_volumes(resource):
            name = volume.get("secretName")
            if name not in known:
                problems.append(f"{resource_id(resource)}: Secret {name} is not defined")
                continue
            problems += [
                f"{resource_id(resource)}: no key {item.get('key')!r} in Secret {name}"
                for item in volume.get("items") or []
                if item.get("key") not in known[name]
            ]
    return problems


def _secret_volumes(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "volumes" and isinstance(value, list):
                yield from (v["secret"] for v in value if isinstance(v.get("secret"), dict))
            else:
                yield from _secret_volumes(value)
    elif isinstance(node, list):
        for item in node:
            yield from _secret_volumes(item)


def reference_problems(resources: Sequence[Mapping[str, Any]]) -> list[str]:
    """ConfigMaps and Services that are referenced but not rendered."""
    configmaps = {r["metadata"]["name"] for r in resources if r.get("kind") == "ConfigMap"}
    services = {r["metadata"]["name"] for r in resources if r.get("kind") == "Service"}
    services |= {
        f"{r['metadata']['name']}-serve-svc" for r in resources if r.get("kind") == "RayService"
    }
    problems = []
    for resource in resources:
        for name in _configmap_refs(resource):
            if name not in configmaps:
                problems.append(f"{resource_id(resource)}: ConfigMap {name} is not defined")
        if resource.get("kind") == "Ingress":
            for rule in resource["spec"].get("rules") or []:
                for path in (rule.get("http") or {}).get("paths") or []:
                    name = path["backend"]["service"]["name"]
                    if name not in services:
                        problems.append(f"{resource_id(resource)}: Service {name} is not defined")
    return problems


def _configmap_refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("configMapRef", "configMap", "configMapKeyRef") and isinstance(value, dict):
                yield str(value.get("name"))
            else:
                yield from _configmap_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _configmap_refs(item)


def endpoint_problems(resources: Sequence[Mapping[str, Any]]) -> list[str]:
    """The mirror is the weights bucket on the S3 endpoint; the public endpoint reaches MinIO."""
    data: dict[str, str] = {}
    for r in resources:
        if r.get("kind") == "ConfigMap":
            data.update(r.get("data") or {})
    endpoint = data.get("SUPERRES_S3_ENDPOINT_URL", "").rstrip("/")
    mirror = f"{endpoint}/{data.get('WEIGHTS_BUCKET', '')}"
    problems = []
    if data.get("SUPERRES_WEIGHTS_MIRRORS", "").rstrip("/") != mirror:
        problems.append(f"SUPERRES_WEIGHTS_MIRRORS must be {mirror} (endpoint + WEIGHTS_BUCKET)")
    public = urlsplit(data.get("SUPERRES_S3_PUBLIC_ENDPOINT_URL", ""))
    if public.hostname in ("localhost", "127.0.0.1"):
        return problems  # a port-forward (cpu overlay)
    s3_service = urlsplit(endpoint).hostname
    routed = {
        rule.get("host")
        for r in resources
        if r.get("kind") == "Ingress"
        for rule in r["spec"].get("rules") or []
        for path in (rule.get("http") or {}).get("paths") or []
        if path["backend"]["service"]["name"] == s3_service
    }
    if public.hostname not in routed:
        problems.append(
            f"SUPERRES_S3_PUBLIC_ENDPOINT_URL host {public.hostname!r} is not an Ingress host "
            f"routed to {s3_service} (routed: {sorted(h for h in routed if h)})"
        )
    return problems


# --- all together --------------------------------------------------------------------------------


def validate_resources(
    resources: Sequence[Mapping[str, Any]], crds: CrdSchemas | None
) -> list[str]:
    """Every problem of a rendered overlay (CRD checks skipped when ``crds`` is None)."""
    problems: list[str] = []
    for resource in resources:
        if str(resource.get("apiVersion", "")).startswith("ray.io/"):
            if crds is not None:
                problems += crds.validate(resource)
            problems += validate_pod_templates(resource)
        else:
            problems += validate_core(resource)
        if resource.get("kind") == "RayService":
            text = (resource.get("spec") or {}).get("serveConfigV2")
            if not isinstance(text, str):
                problems.append(f"{resource_id(resource)}: spec.serveConfigV2 is missing")
                continue
            serve = serve_config_problems(text)
            problems += serve
            if not serve:
                problems += capacity_problems(resource, yaml.safe_load(text))
            problems += memory_problems(resource)
    problems += secret_problems(resources)
    problems += reference_problems(resources)
    problems += endpoint_problems(resources)
    problems += security_problems(resources)
    problems += access_problems(resources)
    problems += durability_problems(resources, known_secrets(resources))
    return problems


def validate_overlay(folder: Path, crds: CrdSchemas | None) -> list[str]:
    try:
        resources = render(folder)
    except ManifestError as e:
        return [str(e)]
    return validate_resources(resources, crds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overlays", nargs="*", help="overlay names (default: all)")
    args = parser.parse_args(argv)
    names = args.overlays or sorted(p.name for p in OVERLAYS_DIR.iterdir() if p.is_dir())
    folder = crd_folder()
    crds = CrdSchemas(folder) if folder.is_dir() else None
    if crds is None:
        print(f"warning: {folder} not found: CRD schemas not checked", file=sys.stderr)
    failed = False
    for name in names:
        problems = validate_overlay(OVERLAYS_DIR / name, crds)
        failed = failed or bool(problems)
        print(f"{name}: {'ok' if not problems else f'{len(problems)} problem(s)'}")
        for problem in problems:
            print(f"  {problem}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
