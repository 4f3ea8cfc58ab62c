# syntax=docker/dockerfile:1
# The training image: everything `patchray train|tune|demo` needs (TensorFlow, NNCF, Ray
# Train/Tune/Data, and the serving stack, which export and evaluation use). Used by the
# training RayCluster (infra/kuberay/raycluster.yaml) and the cluster-launcher configs.
# Build from the repo root:
#   make image-train        # CPU (Xeon) nodes: EXTRAS=train
#   make image-train-gpu    # GPU nodes: EXTRAS=train,gpu (TensorFlow's CUDA wheels)
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}
ARG EXTRAS=train

# wget: KubeRay's probes. rsync + openssh-client: the Ray cluster launcher copies files into
# the container with rsync and its autoscaler, inside the head's container, reaches the
# workers over SSH.
RUN apt-get update \
 && apt-get install -y --no-install-recommends wget rsync openssh-client \
 && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 --shell /bin/bash ray \
 && mkdir -p /var/lib/patchray && chown ray:ray /var/lib/patchray

WORKDIR /app
COPY constraints.txt pyproject.toml README.md ./
COPY platform/ platform/
RUN pip install --no-cache-dir -c constraints.txt ".[${EXTRAS}]"

# Job specs (`patchray train --config /app/jobs/idc.yaml`) and the Serve app, for VM clusters
# that train and serve on the same nodes.
COPY jobs/ jobs/
COPY serve/ serve/
ENV PYTHONPATH=/app \
    PATCHRAY_REGISTRY=/var/lib/patchray/registry \
    PATCHRAY_KEYS=/var/lib/patchray/service/keys.json \
    PATCHRAY_AUDIT=/var/lib/patchray/service/audit

USER ray
EXPOSE 8000 8080
