"""The application: ``serve run configs/serve_config.yaml`` builds it with ``build_app(args)``.

``AppArgs`` types the ``args:`` block of the Serve config, so a typo there fails with a pydantic
message naming the field. Infrastructure settings (S3, weights cache) come from the environment
through ``Settings`` and are handed to each deployment.
"""

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray.serve import Application

from deployments.config import CustomModel, WeightsOverride, build_registry
from deployments.face import DETECTOR, RESTORER, FaceRestorer
from deployments.jobs import JobRunner
from deployments.quota import Quotas
from deployments.upscaler import Upscaler
from models.face.types import FaceDetector
from models.limits import Limits
from models.loading import PRECISIONS
from models.registry import ModelKind, Registry
from models.settings import Settings
from serve_app.auth import KeyRing
from serve_app.ingress import Ingress

APP_NAME = "superres"
DEFAULT_MODELS = [
    "realesrgan-x4plus",
    "realesrgan-x2plus",
    "realesrgan-x4plus-anime",
    "realesr-general-x4v3",
    "realesr-animevideov3",
]


class AppArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default_model: str = "realesrgan-x4plus"
    models: list[str] = Field(default_factory=lambda: list(DEFAULT_MODELS))
    preload: list[str] = Field(default_factory=lambda: ["realesrgan-x4plus"])
    custom_models: list[CustomModel] = Field(default_factory=list)
    precision: str = "auto"
    # Preloaded models compiled for fixed shapes (torch.compile), warmed before the replica is
    # ready: "auto" = on with CUDA (1.59x on an H200), off on CPUs (where it pays little).
    compile: Literal["auto", "on", "off"] = "auto"
    # CPU inference: "auto" = OpenVINO on CPUs when installed (1.2-1.9x torch on x4plus,
    # bench/openvino_cpu.py), torch on GPUs.
    backend: Literal["auto", "torch", "openvino"] = "auto"
    face_enhance: bool = True
    # Other files for the face models (keys: gfpgan-v1.4, retinaface-r50), always pinned.
    face_weights: dict[str, WeightsOverride] = Field(default_factory=dict)
    limits: Limits = Field(default_factory=Limits)
    # Image requests one Ingress replica works on at once; more get 503 before being read.
    max_in_flight: int = Field(default=32, ge=1)
    # Async jobs (/v1/jobs, Prefer: respond-async), run by one JobRunner replica.
    jobs: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> "AppArgs":
        registry = build_registry(self.custom_models)  # also rejects duplicate names
        upscalers = set(registry.names(ModelKind.UPSCALE))
        served = set(self.models) | {c.name for c in self.custom_models}
        for name in [*self.models, *self.preload, self.default_model]:
            if name not in upscalers:
                raise ValueError(f"{name!r} is not an upscaling model; known: {sorted(upscalers)}")
        for name in [*self.preload, self.default_model]:
            if name not in served:
                raise ValueError(f"{name!r} must also be listed in models")
        for name in self.face_weights:
            if name not in (RESTORER, DETECTOR):
                raise ValueError(f"face_weights: {name!r} is not one of {RESTORER}, {DETECTOR}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}")
        return self


def build_app(args: AppArgs) -> Application:
    """The builder ``serve run``/``serve deploy`` call (Serve requires exactly one parameter)."""
    return build(args)


def build(
    args: AppArgs,
    settings: Settings | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    face_detector: FaceDetector | None = None,
) -> Application:
    """The bound application. ``options`` overrides deployment options by deployment name, for
    Python callers (``{"Upscaler": {"user_config": {...}, "num_replicas": 2}}``); ``serve run``
    takes them from the Serve config instead. ``face_detector`` replaces RetinaFace."""
    settings = settings or Settings()
    options = options or {}

    def deployment(cls: Any) -> Any:
        name = cls.name
        return cls.options(**options[name]) if name in options else cls

    upscaler = deployment(Upscaler).bind(
        settings,
        models=args.models,
        preload=args.preload,
        custom_models=args.custom_models,
        precision=args.precision,
        compile=args.compile,
        backend=args.backend,
    )
    faces = None
    if args.face_enhance:
        weights = {
            name: override.source(Registry().get(name).weights.filename)
            for name, override in args.face_weights.items()
        }
        faces = deployment(FaceRestorer).bind(
            settings, upscaler, args.custom_models, weights, face_detector
        )
    quotas = None
    if settings.api_keys_file is not None:
        KeyRing.load(settings.api_keys_file)  # a malformed key file fails here, naming its line
        quotas = deployment(Quotas).bind()
    runner = None
    if args.jobs:
        runner = deployment(JobRunner).bind(
            settings, upscaler, faces, args.custom_models, args.limits
        )
    return deployment(Ingress).bind(
        upscaler,
        faces,
        settings,
        default_model=args.default_model,
        custom_models=args.custom_models,
        limits=args.limits,
        quotas=quotas,
        max_in_flight=args.max_in_flight,
        runner=runner,
    )
