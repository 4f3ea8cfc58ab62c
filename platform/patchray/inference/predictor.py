"""OpenVINO inference on patches: a compiled IR plus its :class:`Preprocess`.

A predictor is built either from a registered model (``from_card``: a version folder and its
card, from disk or in memory; what serving loads) or from an IR and a contract alone (what
evaluation uses before any card exists, so the export step writes the card once).

A multi-scale model's IR has two inputs, ``patch`` and ``context`` (its contract's
``context_scale`` is set): :meth:`PatchPredictor.predict_arrays` takes the second view as
``context`` and feeds each input by name. A contract and an IR that disagree on the number
of inputs are refused when the predictor is built, and a call with the wrong number of
views is refused before inference.

Calibration: a predictor loaded from a card applies the selected precision's
``calibration`` (fitted on that precision's validation scores) to every output, so its
probabilities are on the same scale as the card's threshold; ``raw=True`` returns the IR's
own output (the parity checks compare those). Without a card, or for a card without
calibration, the output is the IR's.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from patchray.errors import ArtifactError
from patchray.inference.preprocess import CONTEXT_COLUMN, CONTEXT_INPUT, PATCH_INPUT, Preprocess

# Without a card, f32: bf16 (OpenVINO's default on AVX512-BF16 CPUs) shifts probabilities
# slightly, enough to flip patches near a threshold chosen in f32. A card's precisions each
# carry their own hint and their own threshold.
DEFAULT_INFERENCE_PRECISION = "f32"


class PatchPredictor:
    """Score patches (probability of tumour) with an OpenVINO IR."""

    def __init__(
        self,
        model_xml: str | Path,
        preprocess: Preprocess,
        *,
        device: str = "CPU",
        inference_precision: str | None = DEFAULT_INFERENCE_PRECISION,
        num_threads: int | None = None,
        card: Any = None,
    ):
        import openvino as ov

        config: dict[str, Any] = {}
        if inference_precision:
            config["INFERENCE_PRECISION_HINT"] = inference_precision
        if num_threads:
            config["INFERENCE_NUM_THREADS"] = num_threads
        if not Path(model_xml).is_file():
            raise ArtifactError(f"{model_xml}: OpenVINO IR not found")
        self.model_xml = Path(model_xml)
        self.preprocess = preprocess
        self.card = card  # ModelCard when loaded from a registered model
        self.precision = inference_precision or "f32"
        # raw IR output -> served probability (the card precision's; None: raw is served)
        self.calibration: Any = None
        self._compiled = ov.Core().compile_model(self.model_xml, device, config)
        self.input_names = check_inputs(self._compiled, preprocess, self.model_xml)
        # A compiled model is thread-safe, an infer request is not: ``compiled(x)`` shares
        # one, so a health check in Serve's thread beside a batch on the event loop failed
        # with "Infer Request is busy" under load. One request per calling thread instead.
        self._requests = threading.local()

    @classmethod
    def from_card(cls, model_dir: str | Path, card: Any = None, *, precision: str = "auto",
                  **kwargs: Any) -> PatchPredictor:
        """Load a registered model: the IR in ``model_dir`` for ``precision`` (``auto``: the
        card's serving precision), run with that precision's hint and threshold. ``card``:
        a :class:`~patchray.registry.card.ModelCard` in memory, else ``model_dir/card.json``."""
        from patchray.registry.card import read_card

        card = card if card is not None else read_card(model_dir)
        name, record = card.precision(precision)
        kwargs.setdefault("inference_precision", record.inference_hint)
        predictor = cls(Path(model_dir) / record.file, card.input, card=card, **kwargs)
        predictor.precision = name
        calibration = record.calibration
        predictor.calibration = None if calibration is None or calibration.identity \
            else calibration
        return predictor

    @property
    def calibrated(self) -> str:
        """The calibration method applied to the outputs (``none``: the raw IR output)."""
        return self.calibration.method if self.calibration is not None else "none"

    @property
    def size(self) -> int:
        return self.preprocess.size

    @property
    def threshold(self) -> float:
        if self.card is None:
            raise ArtifactError(f"{self.model_xml}: no threshold: this predictor was built "
                                "without a model card (evaluation chooses the threshold)")
        return self.card.threshold(self.precision)

    @property
    def multiscale(self) -> bool:
        """Whether the model takes a second view (``context``) beside the patch."""
        return len(self.input_names) == 2

    def predict_arrays(self, x: Any, context: np.ndarray | None = None, *,
                       raw: bool = False) -> np.ndarray:
        """Model input (float32 NHWC, see Preprocess.to_input) -> probabilities, (N,),
        float32: calibrated when the card's precision has a calibration, unless ``raw``.

        A multi-scale model needs ``context`` (its second view, prepared the same way), or
        ``x`` as ``{"patch": ..., "context": ...}`` (:meth:`Preprocess.inputs`); a
        single-input model refuses one."""
        if isinstance(x, dict):
            if context is not None or set(x) != set(self.input_names):
                raise ValueError(f"{self.model_xml}: expected inputs {list(self.input_names)}"
                                 f", got {sorted(x)}" + (" and context" if context is not None
                                                         else ""))
            x, context = x[PATCH_INPUT], x.get(CONTEXT_INPUT)
        if self.multiscale and context is None:
            raise ValueError(f"{self.model_xml}: a multi-scale model takes two inputs (patch, "
                             f"and context at {self.preprocess.context_scale:g}x the field of "
                             "view); got only the patch: pass context=")
        if not self.multiscale and context is not None:
            raise ValueError(f"{self.model_xml}: this model takes one input (patch); got a "
                             "context view too")
        if context is not None and len(context) != len(x):
            raise ValueError(f"{len(x)} patches but {len(context)} context views")
        if x.shape[0] == 0:
            return np.zeros((0,), dtype=np.float32)
        request = getattr(self._requests, "request", None)
        if request is None:
            request = self._requests.request = self._compiled.create_infer_request()
        feed: Any = [x] if context is None else {PATCH_INPUT: x, CONTEXT_INPUT: context}
        out = request.infer(feed, share_inputs=True)[0]
        p = np.asarray(out, dtype=np.float32).reshape(-1)  # outputs are copied (default)
        if raw or self.calibration is None:
            return p
        # as evaluation computed the scores the threshold was chosen on (evaluate.served_scores)
        return self.calibration.apply(p).astype(np.float32)

    def predict_pixels(self, pixels: np.ndarray, context: np.ndarray | None = None, *,
                       raw: bool = False) -> np.ndarray:
        """uint8 ``(N, size, size, 3)`` patches (and a multi-scale model's context views)
        -> probabilities (calibrated unless ``raw``)."""
        return self.predict_arrays(self.preprocess.inputs(pixels, context), raw=raw)

    def predict_images(self, images: Sequence[bytes], *, raw: bool = False,
                       **kwargs: Any) -> np.ndarray:
        """PNG/JPEG (or a dataset's raw) bytes -> probabilities, as training decoded them
        (calibrated unless ``raw``)."""
        return self.predict_arrays(self.preprocess(images, **kwargs), raw=raw)

    def label(self, probability: float) -> int:
        return int(probability >= self.threshold)


def check_inputs(compiled: Any, preprocess: Preprocess, where: Any) -> tuple[str, ...]:
    """The IR's input names, in the contract's order; an IR whose inputs are not what the
    contract says (one ``patch``; or ``patch`` and ``context`` with ``context_scale``) is an
    ArtifactError: it would be fed the wrong views."""
    names = [next(iter(sorted(i.get_names())), "") for i in compiled.inputs]
    expected = preprocess.input_names
    if len(names) != len(expected):
        raise ArtifactError(
            f"{where}: the IR has {len(names)} input(s) ({', '.join(names)}) but its contract "
            f"says {len(expected)} ({', '.join(expected)}"
            + (f", context_scale {preprocess.context_scale:g}" if preprocess.multiscale else
               "; no context_scale") + ")")
    if len(names) == 2 and set(names) != set(expected):
        raise ArtifactError(f"{where}: a two-input IR must name its inputs "
                            f"{', '.join(expected)}; it has {', '.join(names)}")
    return expected


class BatchScorer:
    """Ray Data ``map_batches`` callable: a dataset's records -> ``probability`` per model
    (columns ``probability_<name>``; ``label`` passed through). The patches are decoded once
    per batch for every model, so precisions compared side by side see the same input.
    Built on each Ray worker from picklable arguments: ``models`` maps a name to
    ``(IR xml, OpenVINO inference precision hint)``."""

    def __init__(self, models: dict[str, tuple[str, str]], preprocess: dict[str, Any],
                 encoding: str):
        contract = Preprocess.model_validate(preprocess)
        self.preprocess = contract
        self.predictors = {name: PatchPredictor(xml, contract, inference_precision=hint)
                           for name, (xml, hint) in models.items()}
        self.encoding = encoding

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        shape = {"encoding": self.encoding, "heights": batch.get("height"),
                 "widths": batch.get("width")}
        x = self.preprocess(list(batch["image"]), **shape)
        context = None
        if self.preprocess.multiscale:  # the second view, decoded the same way
            if CONTEXT_COLUMN not in batch:
                raise ValueError(f"a multi-scale model scores datasets with a {CONTEXT_COLUMN!r}"
                                 f" column; this batch has {sorted(batch)}")
            context = self.preprocess(list(batch[CONTEXT_COLUMN]), **shape)
        out = {f"probability_{name}": predictor.predict_arrays(x, context)
               for name, predictor in self.predictors.items()}
        if "label" in batch:
            out["label"] = np.asarray(batch["label"])
        return out
