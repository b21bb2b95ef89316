"""The Serve configs are valid for our own typed args, not only for Ray's schema."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from deployments.config import FaceConfig, UpscalerConfig
from serve_app.app import AppArgs

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
USER_CONFIGS = {"Upscaler": UpscalerConfig, "FaceRestorer": FaceConfig}


@pytest.mark.parametrize("name", ["serve_config.yaml", "serve_config.gpu.yaml"])
def test_config_args_and_user_configs_validate(name: str) -> None:
    config = yaml.safe_load((CONFIGS / name).read_text())
    (app,) = config["applications"]
    assert app["import_path"] == "serve_app.app:build_app"
    args = AppArgs.model_validate(app.get("args", {}))
    assert args.default_model in args.models
    deployments = {d["name"]: d for d in app["deployments"]}
    assert set(deployments) == {"Ingress", "Upscaler", "FaceRestorer"}
    for deployment, model in USER_CONFIGS.items():
        model.model_validate(deployments[deployment].get("user_config", {}))


def test_a_typo_in_args_fails_with_a_message_naming_it() -> None:
    with pytest.raises(ValueError, match="defualt_model"):
        AppArgs.model_validate({"defualt_model": "realesrgan-x4plus"})
    with pytest.raises(ValueError, match="tile must be at least"):
        UpscalerConfig.model_validate({"tile": 4})


def test_serve_can_call_the_builder_with_the_config_args() -> None:
    """What `serve run configs/serve_config.yaml` does first, without starting Ray: Serve calls a
    builder of exactly one parameter, parsing ``args`` with that parameter's pydantic model."""
    import inspect
    import typing

    from pydantic import BaseModel
    from ray.serve import Application

    from serve_app.app import build_app

    (param,) = inspect.signature(build_app).parameters.values()
    model = typing.get_type_hints(build_app)[param.name]
    assert issubclass(model, BaseModel)
    config = yaml.safe_load((CONFIGS / "serve_config.yaml").read_text())
    app = build_app(model.model_validate(config["applications"][0]["args"]))
    assert isinstance(app, Application)


def memory_shortfalls(config: dict) -> list[str]:
    """Deployments whose declared memory cannot hold ``max_ongoing_requests`` requests at the
    app's limits (``Limits.peak_request_bytes``), or that declare none."""
    (app,) = config["applications"]
    limits = AppArgs.model_validate(app.get("args", {})).limits
    on_gpu = {
        d["name"]: d.get("ray_actor_options", {}).get("num_gpus", 0) > 0 for d in app["deployments"]
    }
    found = []
    for deployment in app["deployments"]:
        name = deployment["name"]
        declared = deployment.get("ray_actor_options", {}).get("memory")
        ongoing = deployment.get("max_ongoing_requests")
        if declared is None or ongoing is None:
            found.append(f"{name}: declares no memory or max_ongoing_requests")
            continue
        if name == "Ingress":  # holds uploads only
            peak = limits.max_upload_bytes
        else:
            peak = limits.peak_request_bytes(
                face=name == "FaceRestorer", canvas_on_device=on_gpu[name]
            )
        if ongoing * peak > declared:
            found.append(f"{name}: {ongoing} x {peak} B > {declared} B")
    return found


@pytest.mark.parametrize("name", ["serve_config.yaml", "serve_config.gpu.yaml"])
def test_each_replica_holds_its_requests_at_the_limits(name: str) -> None:
    config = yaml.safe_load((CONFIGS / name).read_text())
    assert memory_shortfalls(config) == []
    (app,) = config["applications"]
    upscaler = next(d for d in app["deployments"] if d["name"] == "Upscaler")
    upscaler["max_ongoing_requests"] *= 2  # the check is real: twice the requests do not fit
    assert [s.split(":")[0] for s in memory_shortfalls(config)] == ["Upscaler"]
