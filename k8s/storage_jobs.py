"""The cluster's two storage Jobs, run in the app image (k8s/base/storage-jobs.yaml).

``setup``: create the results and weights buckets, let anyone read the weights bucket (weights are
public files and every replica verifies each by sha256) and set the results bucket's lifecycle
rules: each prefix of ``RETENTION`` expires after its ``SUPERRES_RETENTION_*_DAYS`` days.
``stage-weights``: fetch every model of ``MODELS`` with ``python -m models fetch`` (sha256-verified)
and upload the files to the weights bucket, so replicas download them in-cluster instead of from
GitHub. Both can run again safely.

Everything comes from the environment the manifests set: ``SUPERRES_S3_*`` (endpoint, region, keys,
results bucket and prefix), ``SUPERRES_RETENTION_*_DAYS``, ``WEIGHTS_BUCKET``, ``MODELS``. This file
is copied into a ConfigMap by k8s/generate.py: it may import only the standard library and boto3.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

logger = logging.getLogger("storage_jobs")

# Files of the weights cache that are not weights: partial downloads, locks, local ncnn conversions
# (replicas only ask mirrors for the upstream file names).
_NOT_WEIGHTS = (".part", ".lock", ".ncnn.safetensors")
_MISSING = {"404", "NoSuchBucket", "NotFound", "NoSuchKey"}


class StorageJobError(Exception):
    """The job cannot do its work (bad settings, unreachable object store)."""


class S3Client(Protocol):
    def list_buckets(self) -> Any: ...
    def head_bucket(self, *, Bucket: str) -> Any: ...
    def create_bucket(self, *, Bucket: str) -> Any: ...
    def put_bucket_policy(self, *, Bucket: str, Policy: str) -> Any: ...
    def put_bucket_lifecycle_configuration(
        self, *, Bucket: str, LifecycleConfiguration: Mapping[str, Any]
    ) -> Any: ...
    def head_object(self, *, Bucket: str, Key: str) -> Any: ...
    def upload_file(self, Filename: str, Bucket: str, Key: str) -> Any: ...


def _error_code(error: Exception) -> str:
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _is_missing(error: Exception) -> bool:
    return _error_code(error) in _MISSING


# --- setup ---------------------------------------------------------------------------------------


def public_read_policy(bucket: str) -> str:
    """A bucket policy letting anyone GET objects (never list, write or delete)."""
    statement = {
        "Sid": "PublicReadWeights",
        "Effect": "Allow",
        "Principal": {"AWS": ["*"]},
        "Action": ["s3:GetObject"],
        "Resource": [f"arn:aws:s3:::{bucket}/*"],
    }
    return json.dumps({"Version": "2012-10-17", "Statement": [statement]})


# Retention: each setting (whole days after an object was written) and the key prefixes of the
# results bucket it expires. The job keys are models/jobs.py's (tests/test_k8s.py keeps them in
# step); the results are under SUPERRES_S3_PREFIX, the jobs' results under results/jobs/.
RESULTS_DAYS = "SUPERRES_RETENTION_RESULTS_DAYS"
INPUTS_DAYS = "SUPERRES_RETENTION_INPUTS_DAYS"
RECORDS_DAYS = "SUPERRES_RETENTION_RECORDS_DAYS"
CACHE_DAYS = "SUPERRES_RETENTION_CACHE_DAYS"
JOB_RESULTS_PREFIX = "results/jobs/"
RETENTION: dict[str, tuple[str, ...]] = {
    RESULTS_DAYS: (JOB_RESULTS_PREFIX,),  # and SUPERRES_S3_PREFIX
    INPUTS_DAYS: ("jobs/inputs/",),
    RECORDS_DAYS: ("jobs/records/", "jobs/active/", "jobs/progress/", "jobs/idempotency/"),
    CACHE_DAYS: ("cache/",),
}


def read_retention(env: Mapping[str, str]) -> dict[str, int]:
    """The ``SUPERRES_RETENTION_*_DAYS`` settings of ``env``: each required, a whole number >= 1."""
    days = {}
    for name in RETENTION:
        value = env.get(name, "").strip()
        if not value:
            raise StorageJobError(f"{name} is not set")
        if not value.isdigit() or int(value) < 1:
            raise StorageJobError(
                f"{name} must be a whole number of days, 1 or more, got {value!r}"
            )
        days[name] = int(value)
    return days


def retention_prefixes(results_prefix: str) -> dict[str, tuple[str, ...]]:
    """``RETENTION`` with the results prefix added; refuses prefixes that overlap across settings
    (S3 would apply the shortest expiry to the overlap, silently)."""
    if not results_prefix or not results_prefix.endswith("/"):
        raise StorageJobError(
            f"SUPERRES_S3_PREFIX must be a folder such as results/, got {results_prefix!r}: "
            "retention works by prefix, and an empty one would expire every key with the results"
        )
    wanted = {name: list(values) for name, values in RETENTION.items()}
    wanted[RESULTS_DAYS].insert(0, results_prefix)
    out: dict[str, tuple[str, ...]] = {}
    for name, listed in wanted.items():  # drop a prefix inside another of the same setting
        out[name] = tuple(
            p for p in dict.fromkeys(listed) if not any(p != q and p.startswith(q) for q in listed)
        )
    for name, prefixes in out.items():
        for other, other_prefixes in out.items():
            for p in prefixes:
                for q in other_prefixes:
                    if name != other and p.startswith(q):
                        raise StorageJobError(
                            f"prefix {p} ({name}) is inside {q} ({other}): give each its own folder"
                        )
    return out


def retention_rules(days: Mapping[str, int], results_prefix: str) -> dict[str, Any]:
    """The results bucket's lifecycle configuration: every prefix of a retention setting expires
    that many days after each object was written."""
    rules = []
    for name, prefixes in retention_prefixes(results_prefix).items():
        if days.get(name, 0) < 1:
            raise StorageJobError(f"{name} must be 1 or more, got {days.get(name)}")
        for prefix in prefixes:
            rules.append(
                {
                    "ID": "expire-" + prefix.strip("/").replace("/", "-"),
                    "Status": "Enabled",
                    "Filter": {"Prefix": prefix},
                    "Expiration": {"Days": days[name]},
                }
            )
    return {"Rules": rules}


def ensure_bucket(client: S3Client, bucket: str) -> bool:
    """Create ``bucket`` unless it exists; True when it was created."""
    try:
        client.head_bucket(Bucket=bucket)
        return False
    except Exception as e:
        if not _is_missing(e):
            raise
    try:
        client.create_bucket(Bucket=bucket)
    except Exception as e:  # a concurrent run created it first
        if _error_code(e) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
    return True


def setup(
    client: S3Client, *, results: str, prefix: str, days: Mapping[str, int], weights: str
) -> None:
    rules = retention_rules(days, prefix)
    for bucket in (results, weights):
        created = ensure_bucket(client, bucket)
        logger.info("bucket %s %s", bucket, "created" if created else "exists")
    client.put_bucket_policy(Bucket=weights, Policy=public_read_policy(weights))
    logger.info("bucket %s: anonymous read-only", weights)
    client.put_bucket_lifecycle_configuration(Bucket=results, LifecycleConfiguration=rules)
    for rule in rules["Rules"]:
        logger.info(
            "bucket %s: objects under %s expire after %d days",
            results,
            rule["Filter"]["Prefix"],
            rule["Expiration"]["Days"],
        )


# --- stage-weights -------------------------------------------------------------------------------

Runner = Callable[[Sequence[str]], int]


def _run(cmd: Sequence[str]) -> int:
    return subprocess.run(list(cmd), check=False).returncode


def fetch_models(models: Sequence[str], cache_dir: Path, run: Runner = _run) -> list[str]:
    """Fetch each model into ``cache_dir`` with the app's CLI; returns the models that failed."""
    failed = []
    for name in models:
        cmd = [sys.executable, "-m", "models", "fetch", name, "--cache-dir", str(cache_dir)]
        if run(cmd) != 0:
            logger.error("model %s: fetch failed (see above)", name)
            failed.append(name)
    return failed


def weights_files(cache_dir: Path) -> list[Path]:
    """The verified weights files of the cache (the CLI only ever renames verified files in)."""
    return sorted(
        p
        for p in cache_dir.iterdir()
        if p.is_file() and not p.name.startswith(".") and not p.name.endswith(_NOT_WEIGHTS)
    )


def upload_missing(client: S3Client, bucket: str, files: Sequence[Path]) -> list[str]:
    """Upload each file as ``<bucket>/<file name>`` unless an object of that size is there."""
    uploaded = []
    for path in files:
        try:
            head = client.head_object(Bucket=bucket, Key=path.name)
            if int(head.get("ContentLength", -1)) == path.stat().st_size:
                logger.info("weights %s: already staged", path.name)
                continue
        except Exception as e:
            if not _is_missing(e):
                raise
        client.upload_file(str(path), bucket, path.name)
        logger.info("weights %s: uploaded (%d bytes)", path.name, path.stat().st_size)
        uploaded.append(path.name)
    return uploaded


def stage_weights(
    client: S3Client, *, models: Sequence[str], cache_dir: Path, bucket: str, run: Runner = _run
) -> list[str]:
    """Fetch and upload; returns the models that could not be fetched (the rest is uploaded)."""
    if not models:
        raise StorageJobError("MODELS is empty: nothing to stage")
    cache_dir.mkdir(parents=True, exist_ok=True)
    failed = fetch_models(models, cache_dir, run)
    upload_missing(client, bucket, weights_files(cache_dir))
    return failed


# --- plumbing ------------------------------------------------------------------------------------


def wait_for_s3(
    client: S3Client,
    timeout_s: float,
    *,
    interval_s: float = 3.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Poll the object store until it answers (it may still be starting), at most ``timeout_s``."""
    deadline = clock() + timeout_s
    while True:
        try:
            client.list_buckets()
            return
        except Exception as e:
            if clock() + interval_s > deadline:
                raise StorageJobError(
                    f"object store unreachable after {timeout_s:.0f} s: {e}"
                ) from e
            logger.info("waiting for the object store: %s", e)
            sleep(interval_s)


def _env(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise StorageJobError(f"environment variable {name} is not set")
    return value


def make_client(env: Mapping[str, str]) -> S3Client:
    import boto3
    from botocore.config import Config

    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": "path"},
        retries={"max_attempts": 5, "mode": "standard"},
        connect_timeout=5,
        read_timeout=120,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    client: S3Client = boto3.client(
        "s3",
        endpoint_url=_env(env, "SUPERRES_S3_ENDPOINT_URL"),
        region_name=env.get("SUPERRES_S3_REGION") or "us-east-1",
        aws_access_key_id=_env(env, "SUPERRES_S3_ACCESS_KEY_ID"),
        aws_secret_access_key=_env(env, "SUPERRES_S3_SECRET_ACCESS_KEY"),
        config=config,
    )
    return client


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] = os.environ) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job", choices=["setup", "stage-weights"])
    parser.add_argument("--cache-dir", type=Path, default=Path("/weights"))
    parser.add_argument("--wait-s", type=float, default=600.0, help="wait for the object store")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        client = make_client(env)
        weights = _env(env, "WEIGHTS_BUCKET")
        if args.job == "setup":
            results, prefix = _env(env, "SUPERRES_S3_BUCKET"), env.get("SUPERRES_S3_PREFIX", "")
            days = read_retention(env)
            retention_rules(days, prefix)  # bad settings fail before waiting for the store
            wait_for_s3(client, args.wait_s)
            setup(client, results=results, prefix=prefix, days=days, weights=weights)
            return 0
        wait_for_s3(client, args.wait_s)
        models = env.get("MODELS", "").split()
        failed = stage_weights(client, models=models, cache_dir=args.cache_dir, bucket=weights)
    except StorageJobError as e:
        logger.error("%s", e)
        return 2
    if failed:
        logger.error("not staged (replicas will try their other sources): %s", " ".join(failed))
        return 1
    logger.info("all %d models staged in bucket %s", len(models), weights)
    return 0


if __name__ == "__main__":
    sys.exit(main())
