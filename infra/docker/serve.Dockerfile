# syntax=docker/dockerfile:1
# The serving image: Ray Serve + OpenVINO, and no TensorFlow (`pip install '.[serve]'`), so
# replicas start in seconds. Used by the RayService (infra/kuberay/rayservice.yaml).
# Build from the repo root (the context must be the repo):
#   make image-serve        # = docker build -f infra/docker/serve.Dockerfile -t <name> .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

# wget: KubeRay's liveness/readiness probes run `wget` against Ray's health endpoints.
RUN apt-get update \
 && apt-get install -y --no-install-recommends wget \
 && rm -rf /var/lib/apt/lists/*

# Ray's own images run as `ray` (uid 1000); the pods set fsGroup 1000 for the shared volume.
RUN useradd --create-home --uid 1000 --shell /bin/bash ray \
 && mkdir -p /var/lib/patchray && chown ray:ray /var/lib/patchray

WORKDIR /app
COPY constraints.txt pyproject.toml README.md ./
COPY platform/ platform/
# Exact versions from constraints.txt; the last line fails the build if TensorFlow crept in.
RUN pip install --no-cache-dir -c constraints.txt '.[serve]' \
 && python -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) for m in ('tensorflow', 'tf_keras', 'keras', 'nncf')))"

# serve/config.yaml's import_path (serve.app:build) resolves from /app on every Ray worker.
COPY serve/ serve/
ENV PYTHONPATH=/app \
    PATCHRAY_REGISTRY=/var/lib/patchray/registry \
    PATCHRAY_KEYS=/var/lib/patchray/service/keys.json \
    PATCHRAY_AUDIT=/var/lib/patchray/service/audit

USER ray
# Serve's HTTP proxy and Ray's metrics export; never publish 8265, 6379 or 10001.
EXPOSE 8000 8080
