"""The one settings object: infrastructure read from the environment (prefix ``SUPERRES_``).

What a deployment does (models, limits, batching) lives in the Serve config's typed args instead;
what differs between machines and must stay out of YAML (keys, endpoints, paths) lives here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from models.storage import StorageSettings
from models.urlpolicy import UrlPolicy
from models.weights import WeightsStore
from superres_client.webhooks import WebhookSecret, parse_secret


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SUPERRES_", extra="ignore")

    # Weights
    weights_dir: Path = Path.home() / ".cache" / "superres" / "weights"
    weights_mirrors: Annotated[list[str], NoDecode] = Field(default_factory=list)
    allow_download: bool = True
    download_timeout_s: float = Field(default=60.0, gt=0)
    device: str | None = None  # "cpu", "cuda", "cuda:1"; default: the GPU Ray assigned, else CPU

    # Result storage (any S3-compatible endpoint)
    s3_endpoint_url: str | None = None
    s3_public_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_bucket: str = "superres-results"
    s3_prefix: str = "results/"
    s3_url_ttl_s: int = 3600
    s3_create_bucket: bool = True

    # Who may call: hashed API keys (python -m serve_app keys create); unset = auth off
    api_keys_file: Path | None = None

    # Jobs: image_url / webhook_url may reach only public addresses, plus these hosts or CIDRs
    url_allowlist: str = ""
    # Signs job webhooks (Standard Webhooks, "whsec_..."); unset: webhook_url is refused. During a
    # rotation, several separated by spaces, the new one first: each signs, receivers verify either.
    webhook_secret: SecretStr | None = None

    # Days before the object store expires what jobs leave (bucket lifecycle rules, set by the
    # buckets Job in k8s and by `make run` locally)
    retention_results_days: int = Field(default=7, ge=1)
    retention_inputs_days: int = Field(default=1, ge=1)
    retention_records_days: int = Field(default=30, ge=1)
    retention_cache_days: int = Field(default=7, ge=1)

    @field_validator("weights_mirrors", mode="before")
    @classmethod
    def _split_mirrors(cls, value: object) -> object:
        if isinstance(value, str):
            return [m.strip().rstrip("/") for m in value.split(",") if m.strip()]
        return value

    @field_validator("weights_mirrors")
    @classmethod
    def _check_mirrors(cls, value: list[str]) -> list[str]:
        for mirror in value:
            if not mirror.startswith(("http://", "https://")):
                raise ValueError(f"weights mirror {mirror!r} must be an http(s) URL")
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _check_webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not _webhook_secrets(value):  # a clear error at start
            raise ValueError("webhook_secret is empty: leave it unset to turn webhooks off")
        return value

    def webhook_signers(self) -> tuple[WebhookSecret, ...]:
        """The service's webhook secrets, parsed, the current one first; () when webhooks are
        off."""
        return () if self.webhook_secret is None else _webhook_secrets(self.webhook_secret)

    @model_validator(mode="after")
    def _keys_come_in_pairs(self) -> Settings:
        if (self.s3_access_key_id is None) != (self.s3_secret_access_key is None):
            raise ValueError(
                "set both SUPERRES_S3_ACCESS_KEY_ID and SUPERRES_S3_SECRET_ACCESS_KEY, or neither "
                "(to use the AWS credential chain)"
            )
        return self

    def storage(self) -> StorageSettings:
        return StorageSettings(
            endpoint_url=self.s3_endpoint_url,
            public_endpoint_url=self.s3_public_endpoint_url,
            region=self.s3_region,
            access_key_id=self.s3_access_key_id,
            secret_access_key=self.s3_secret_access_key,
            bucket=self.s3_bucket,
            prefix=self.s3_prefix,
            url_ttl_s=self.s3_url_ttl_s,
            create_bucket=self.s3_create_bucket,
        )

    def url_policy(self, max_bytes: int) -> UrlPolicy:
        """The guarded client's policy for image_url and webhook_url."""
        return UrlPolicy.from_allowlist_string(self.url_allowlist, max_bytes=max_bytes)

    def weights_store(self) -> WeightsStore:
        return WeightsStore(
            self.weights_dir,
            mirrors=self.weights_mirrors,
            timeout_s=self.download_timeout_s,
            allow_download=self.allow_download,
        )


def _webhook_secrets(value: SecretStr) -> tuple[WebhookSecret, ...]:
    """``"whsec_new whsec_old"`` parsed; a malformed one raises with the reason, never itself."""
    return tuple(map(parse_secret, value.get_secret_value().split()))
