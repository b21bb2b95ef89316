"""The local bucket's lifecycle rules: what jobs leave expires as in the cluster (`make run`).

The rules are the ones the Kubernetes buckets Job sets (``k8s.storage_jobs.retention_rules``),
with the days of ``Settings`` (``SUPERRES_RETENTION_*_DAYS``). SeaweedFS stores them and expires
objects in its daily background pass.
"""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config

from k8s.storage_jobs import (
    CACHE_DAYS,
    INPUTS_DAYS,
    RECORDS_DAYS,
    RESULTS_DAYS,
    retention_rules,
)
from models.settings import Settings


def lifecycle(settings: Settings) -> dict[str, Any]:
    days = {
        RESULTS_DAYS: settings.retention_results_days,
        INPUTS_DAYS: settings.retention_inputs_days,
        RECORDS_DAYS: settings.retention_records_days,
        CACHE_DAYS: settings.retention_cache_days,
    }
    return retention_rules(days, settings.s3_prefix)


def apply_retention(settings: Settings) -> dict[str, Any]:
    """Set the lifecycle rules on the results bucket (it must exist); returns them."""
    secret = settings.s3_secret_access_key
    client = boto3.session.Session(
        aws_access_key_id=settings.s3_access_key_id,
        aws_secret_access_key=secret.get_secret_value() if secret else None,
        region_name=settings.s3_region,
    ).client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )
    rules = lifecycle(settings)
    client.put_bucket_lifecycle_configuration(
        Bucket=settings.s3_bucket, LifecycleConfiguration=rules
    )
    return rules
