#!/bin/sh
# The MinIO user the Ray pods sign with (the keys of Secret superres-s3-app), instead of MinIO's root
# credentials: it may find and list the results bucket, and read, write and delete the objects under
# the prefixes the app uses there (the results prefix, results/jobs/, jobs/, cache/: models/jobs.py),
# nothing else (no other bucket, no bucket settings, no admin). The setup Job runs this with `mc` and
# the root credentials before it creates the buckets (k8s/base/storage-jobs.yaml). It can run again:
# the policy is rewritten, the user's secret key reset (a rotation), and the policy attached once.
# k8s/generate.py copies this file into the ConfigMap superres-storage-jobs.
#
# Environment: SUPERRES_S3_ENDPOINT_URL, SUPERRES_S3_BUCKET, SUPERRES_S3_PREFIX (e.g. results/),
# MINIO_ROOT_USER, MINIO_ROOT_PASSWORD, APP_ACCESS_KEY_ID, APP_SECRET_ACCESS_KEY, and WAIT_S (how
# long to wait for MinIO, default 600).
set -eu

: "${SUPERRES_S3_ENDPOINT_URL:?is not set}" "${SUPERRES_S3_BUCKET:?is not set}"
: "${MINIO_ROOT_USER:?is not set}" "${MINIO_ROOT_PASSWORD:?is not set}"
: "${APP_ACCESS_KEY_ID:?is not set}" "${APP_SECRET_ACCESS_KEY:?is not set}"
prefix="${SUPERRES_S3_PREFIX:-}"
policy=superres-results
alias=superres

fail() {
    echo "minio-user: $*" >&2
    exit 2
}

[ "$APP_ACCESS_KEY_ID" != "$MINIO_ROOT_USER" ] ||
    fail "the app's access key is MinIO's root user: give Secret superres-s3-app its own keys"
case "$SUPERRES_S3_BUCKET$prefix" in
*'"'* | *'\'*) fail "SUPERRES_S3_BUCKET and SUPERRES_S3_PREFIX may not hold quotes or backslashes" ;;
esac

# mc keeps its aliases here: the root filesystem is read-only, /tmp is an emptyDir.
export MC_CONFIG_DIR="${TMPDIR:-/tmp}/mc"
mkdir -p "$MC_CONFIG_DIR"

waited=0
until mc alias set "$alias" "$SUPERRES_S3_ENDPOINT_URL" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" \
    >/dev/null 2>&1 && mc admin info "$alias" >/dev/null 2>&1; do
    [ "$waited" -lt "${WAIT_S:-600}" ] || fail "MinIO at $SUPERRES_S3_ENDPOINT_URL unreachable after ${waited} s"
    echo "minio-user: waiting for MinIO at $SUPERRES_S3_ENDPOINT_URL"
    sleep 3
    waited=$((waited + 3))
done

# The results (SUPERRES_S3_PREFIX) and the job system's keys (models/jobs.py): jobs' results,
# records, inputs, progress and idempotency keys, and the result cache. Deletes: the job system
# removes its markers; AbortMultipartUpload: a failed large upload is cleaned up.
bucket="arn:aws:s3:::$SUPERRES_S3_BUCKET"
cat >"$MC_CONFIG_DIR/$policy.json" <<EOF
{
  "Version": "2012-10-17",
  "Statement": [
    {
      "Effect": "Allow",
      "Action": ["s3:GetBucketLocation", "s3:ListBucket"],
      "Resource": ["$bucket"]
    },
    {
      "Effect": "Allow",
      "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"],
      "Resource": ["$bucket/$prefix*", "$bucket/results/jobs/*", "$bucket/jobs/*", "$bucket/cache/*"]
    }
  ]
}
EOF
mc admin policy create "$alias" "$policy" "$MC_CONFIG_DIR/$policy.json"
mc admin user add "$alias" "$APP_ACCESS_KEY_ID" "$APP_SECRET_ACCESS_KEY"
# Attaching a policy the user already has is an error: attach it only once.
if mc admin user info "$alias" "$APP_ACCESS_KEY_ID" | grep -q "$policy"; then
    echo "minio-user: policy $policy already attached to $APP_ACCESS_KEY_ID"
else
    mc admin policy attach "$alias" "$policy" --user "$APP_ACCESS_KEY_ID"
fi
echo "minio-user: $APP_ACCESS_KEY_ID may list $SUPERRES_S3_BUCKET and read, write and delete" \
    "$prefix*, results/jobs/*, jobs/* and cache/* there, nothing else"
