"""Patch datasets.

Writing: :mod:`~patchray.data.sources` (IDC, PCam, class folders, synthetic) ->
:mod:`~patchray.data.ingest` (the one writer) -> Parquet split by patient + manifest.
Reading: :mod:`~patchray.data.manifest` (the typed manifest and the ``PatchDataset`` handle
every reader takes), :mod:`~patchray.data.pipeline` (Ray Data streams), ``show``/``validate``.
"""
