"""Super-resolution models without Ray: registry, verified weights, loading, tiled inference, image I/O."""
