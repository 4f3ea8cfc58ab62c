"""Where a classifier replica gets its model: a version folder, or a registry reference.

For ``NAME@ALIAS`` the source can be asked which version the alias points at now, so a
replica follows promotions and rollbacks; a version folder or ``NAME@VERSION`` is pinned.
No Ray here: the classifier deployment holds one of these.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from patchray.errors import ArtifactError
from patchray.inference.predictor import PatchPredictor
from patchray.registry.card import CARD_JSON, ModelCard, read_card
from patchray.registry.store import ModelRef, ModelRegistry, default_root
from patchray.serving.answers import ModelInfo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModel:
    predictor: PatchPredictor
    info: ModelInfo


def model_info(predictor: PatchPredictor) -> ModelInfo:
    card: ModelCard = predictor.card
    weights = predictor.model_xml.with_suffix(".bin").name
    return ModelInfo(
        name=card.name, version=str(card.version), precision=predictor.precision,
        sha256=card.files.get(weights, ""), threshold=predictor.threshold,
        class_names=tuple(card.class_names), input=card.input.model_dump(mode="json"),
        ref=card.ref, calibration=predictor.calibrated,
    )


class ModelSource:
    """``model``: a folder with ``card.json``, or ``NAME``, ``NAME@VERSION``, ``NAME@ALIAS``."""

    def __init__(self, model: str, *, registry: str = "", precision: str = "auto"):
        if not model:
            raise ArtifactError("serve.model is empty: give a registry reference "
                                "(NAME@production) or a registered version folder")
        self.model = model
        self.precision = precision
        self.folder = Path(model) if (Path(model) / CARD_JSON).is_file() else None
        self.ref = None if self.folder else ModelRef.parse(model)
        self.registry = None if self.folder else ModelRegistry(registry or default_root())

    @property
    def follows_alias(self) -> bool:
        return self.ref is not None and isinstance(self.ref.selector, str)

    def card(self) -> ModelCard:
        """The card the source points at now (for an alias: re-read from the registry)."""
        if self.folder is not None:
            return read_card(self.folder)
        assert self.registry is not None and self.ref is not None
        return self.registry.resolve(self.ref)

    def load(self, card: ModelCard | None = None) -> ServedModel:
        card = card or self.card()
        if card.input.multiscale:
            # The HTTP APIs take one patch per instance; a context view has no field yet.
            raise ArtifactError(
                f"{card.ref}: a multi-scale model (inputs patch and context, context_scale "
                f"{card.input.context_scale:g}) cannot be served: the serving APIs send one "
                "patch per instance. Use it with `patchray slide predict`, or serve a "
                "single-scale model")
        folder = self.folder or self.registry.local_dir(card)  # type: ignore[union-attr]
        predictor = PatchPredictor.from_card(folder, card, precision=self.precision)
        return ServedModel(predictor, model_info(predictor))

    def newer(self, current: ModelInfo) -> ServedModel | None:
        """The model the alias points at, when it is not ``current``'s version. A version
        with a different input contract is refused: the ingress decodes to the old one."""
        if not self.follows_alias:
            return None
        card = self.card()
        if str(card.version) == current.version and card.name == current.name:
            return None
        if card.input.model_dump(mode="json") != current.input:
            raise ArtifactError(
                f"{card.ref}: input contract {card.input.model_dump(mode='json')} differs from "
                f"the served {current.ref}'s {current.input}; deploy it as a new application")
        return self.load(card)
