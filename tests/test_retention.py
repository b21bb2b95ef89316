"""What jobs leave expires locally too: the bucket's lifecycle rules, on real SeaweedFS."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config

from devtools.retention import apply_retention
from models.s3 import ResultStore
from models.settings import Settings


def test_make_runs_bucket_gets_the_clusters_lifecycle_rules(s3_server: Any) -> None:
    storage = s3_server.settings(bucket="retention-test")
    ResultStore(storage).ensure_bucket()
    settings = Settings(
        s3_endpoint_url=storage.endpoint_url,
        s3_access_key_id=storage.access_key_id,
        s3_secret_access_key=storage.secret_access_key,
        s3_bucket=storage.bucket,
        retention_inputs_days=2,
    )
    rules = apply_retention(settings)
    client = boto3.client(
        "s3",
        endpoint_url=storage.endpoint_url,
        aws_access_key_id=storage.access_key_id,
        aws_secret_access_key=storage.secret_access_key.get_secret_value(),
        region_name="us-east-1",
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )
    stored = client.get_bucket_lifecycle_configuration(Bucket=storage.bucket)["Rules"]
    expiry = {r["Filter"]["Prefix"]: r["Expiration"]["Days"] for r in stored}
    assert expiry == {r["Filter"]["Prefix"]: r["Expiration"]["Days"] for r in rules["Rules"]}
    assert expiry["jobs/inputs/"] == 2 and expiry["jobs/records/"] == 30
    assert expiry["cache/"] == 7 and expiry["results/"] == 7
