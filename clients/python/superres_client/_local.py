"""``superres upscale --local``: the same upscale in this process, on ``models/`` (the code path of
``python -m models upscale``). Imported only when asked for: it brings torch."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

from models import pipeline
from models.limits import Limits
from models.policy import TilePolicy
from models.provider import ModelProvider
from models.registry import Registry, user_model_spec, variant_id
from models.settings import Settings
from superres_client.options import UpscaleOptions

DEFAULT_MODEL = "realesrgan-x4plus"


@dataclass(frozen=True)
class LocalResult:
    data: bytes
    width: int
    height: int
    format: str
    seconds: float


def parse_custom(value: str) -> tuple[str, str, str]:
    """``NAME=PATH@SHA256`` into its parts."""
    name, sep, rest = value.partition("=")
    path, sep2, sha = rest.rpartition("@")
    if not (sep and sep2 and name and path and sha):
        raise ValueError(f"--custom-model {value!r}: use NAME=PATH@SHA256")
    return name, path, sha


class LocalUpscaler:
    """One model loaded once (on first use) for every image of a run."""

    def __init__(
        self,
        model: str | None,
        custom_models: list[str],
        weights_dir: Path | None = None,
        backend: str = "auto",
    ) -> None:
        registry = Registry()
        for value in custom_models:
            name, path, sha = parse_custom(value)
            registry.register(user_model_spec(name, sha256=sha, path=path), replace=True)
        update: dict[str, object] = {} if weights_dir is None else {"weights_dir": weights_dir}
        store = Settings().model_copy(update=update).weights_store()
        self.model = model or DEFAULT_MODEL
        self.provider = ModelProvider(registry, store, backend=backend)
        self.spec = self.provider.upscale_spec(self.model)
        self._runners: dict[str, pipeline.Runner] = {}

    def _load(self, denoise: float | None) -> pipeline.LoadRunner:
        model_id = variant_id(self.spec, denoise)

        async def load() -> pipeline.Runner:
            if model_id in self._runners:
                return self._runners[model_id]
            network = self.provider.load(model_id).upscaler
            runner = TilePolicy.in_process(network).runner(network)
            self._runners[model_id] = runner
            return runner

        return load

    def upscale(self, data: bytes, options: UpscaleOptions) -> LocalResult:
        started = time.perf_counter()
        options = options.model_copy(update={"model": self.model})
        limits = Limits(max_upload_bytes=max(len(data), 1))
        result = asyncio.run(
            pipeline.upscale_bytes(
                data,
                options,
                limits,
                known_scale=self.spec.scale,
                load=self._load(options.denoise),
            )
        )
        return LocalResult(
            result.data,
            result.width,
            result.height,
            result.format,
            time.perf_counter() - started,
        )
