"""Deployment manifests built from the project's own sources (see :mod:`patchray.deploy.kuberay`)."""
