"""Kubernetes manifests and their tooling: generator, renderer (kubectl kustomize), validators."""


class ManifestError(Exception):
    """A config or manifest cannot be generated, rendered or parsed (the message says why)."""
