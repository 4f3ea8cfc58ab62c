"""Workflows: jobs that compose the stages (data, training, export, evaluation, serving).

The top layer: the CLI calls these; stages, benchmarks and the serving path never import
them. Each workflow logs its progress through ``logging`` (``patchray.workflows``).
"""
