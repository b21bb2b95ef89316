"""Kubernetes manifests and their tooling: the generator, a kustomize subset and the validators."""


class ManifestError(Exception):
    """A config or manifest cannot be generated, rendered or parsed (the message says why)."""
