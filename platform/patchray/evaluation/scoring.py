"""Score a dataset split with an OpenVINO model, in parallel with Ray Data.

Evaluation uses the IR that will be served, not the Keras model: the metrics and the
threshold then describe exactly what the hospital integration calls. A multi-scale model
(contract ``context_scale``) is fed both views: the split's ``context_image`` is read too.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from patchray.data.manifest import PatchDataset
from patchray.data.pipeline import contract_views, raise_explained, read_split
from patchray.inference.predictor import BatchScorer
from patchray.inference.preprocess import Preprocess


def score_split(
    models: Mapping[str, tuple[str | Path, str]], preprocess: Preprocess, dataset: PatchDataset,
    split: str, *, concurrency: int = 1, batch_size: int = 256, val_holdout: float = 0.0,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``(labels, {name: probabilities})`` for every labelled patch of ``split``, each model
    (``name -> (IR xml, inference precision hint)``) scoring the same decoded patches."""
    ds = read_split(dataset, split, val_holdout=val_holdout,
                    views=contract_views(preprocess)).map_batches(
        BatchScorer,
        fn_constructor_args=({n: (str(xml), hint) for n, (xml, hint) in models.items()},
                             preprocess.model_dump(mode="json"), dataset.encoding),
        batch_size=batch_size,
        batch_format="numpy",
        concurrency=concurrency,
        num_cpus=1,
    )
    labels, probs = [], {name: [] for name in models}
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            labels.append(batch["label"])
            for name in models:
                probs[name].append(batch[f"probability_{name}"])
    except Exception as e:
        raise_explained(e, dataset.root)
    y = np.concatenate(labels).astype(np.float64)
    keep = ~np.isnan(y)  # unlabelled patches carry no ground truth to score against
    return y[keep].astype(np.int64), {
        name: np.concatenate(p).astype(np.float64)[keep] for name, p in probs.items()}


def labelled_inputs(dataset: PatchDataset, preprocess: Preprocess, split: str, *,
                    limit: int = 2000, val_holdout: float = 0.0) -> tuple[Any, np.ndarray]:
    """Up to ``limit`` labelled patches of ``split`` as model input and labels, in memory
    (NNCF's accuracy control validates on these). The input is one array, or for a
    multi-scale contract ``{"patch": ..., "context": ...}``."""
    rows = [r for r in dataset.sample_rows(split, limit, val_holdout=val_holdout, spread=True)
            if r["label"] is not None]
    x = preprocess.row_inputs(rows, encoding=dataset.encoding)
    return x, np.asarray([r["label"] for r in rows], dtype=np.int64)
