"""Benchmarks that anyone can rerun: throughput figures as ratios measured side by side.

    python -m patchray.benchmarks decode   --out runs/bench [--size 50 --size 96] [--quick]
    python -m patchray.benchmarks augment  ...
    python -m patchray.benchmarks reader   ...   # Ray Data -> 2 shard readers vs train step rate
    python -m patchray.benchmarks training ...   # Ray Train images/s vs plain tf_keras fit
    python -m patchray.benchmarks memory   ...   # one epoch through a small object store
    python -m patchray.benchmarks tune     ...   # Hyperband vs random search: epochs, best AUC
    python -m patchray.benchmarks all      ...

Each benchmark prints progress and a results table and writes ``<out>/<name>.json`` (plus a
PNG chart). On a shared machine absolute numbers move with the load; compare the ratios,
which are measured in the same run (variants interleaved round by round).
"""
