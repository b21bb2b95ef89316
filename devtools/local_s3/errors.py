"""The one error of the local S3 server."""


class LocalS3Error(RuntimeError):
    """The local S3 server cannot be started (binary missing, port taken, not ready in time)."""
