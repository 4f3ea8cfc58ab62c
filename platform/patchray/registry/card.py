"""The model card: what a registered model is, how to feed it, how good it is, where it came
from (no TensorFlow, no OpenVINO imports: serving reads it).

A version folder holds the IR files plus ``card.json`` (this model, validated) and
``card.md`` (the same, rendered for people). ``card.json`` is written once, last, by the
registry after it assigned the version and hashed every file, so its presence marks a
complete model. Serving and slide prediction take everything they need from here: the input
contract (with ``input.context_scale`` for a multi-scale model's second view), the class
names, and per precision the IR file, the OpenVINO hint, the calibration of its output
(``calibration``: fitted on that precision's validation scores, applied by the predictor)
and the decision threshold chosen for that precision, on the calibrated scale. A card
without ``calibration`` (registered before calibration existed) serves the raw output and
compares it to its threshold, as it always did.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from patchray.errors import ArtifactError
from patchray.evaluation.calibration import Calibration
from patchray.inference.preprocess import Preprocess

CARD_JSON = "card.json"
CARD_MD = "card.md"
Precision = Literal["f32", "bf16", "int8"]
PRECISIONS: tuple[str, ...] = ("f32", "bf16", "int8")
IR_FILES = {"f32": "model.xml", "int8": "model-int8.xml"}  # bf16 runs the f32 IR
HASH_CHUNK = 1 << 20


class _Card(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


class PrecisionRecord(_Card):
    """One way to run the model, measured on the validation patients against f32."""

    file: str = Field(description="IR xml in the version folder")
    inference_hint: Literal["f32", "bf16"] = Field(
        description="OpenVINO INFERENCE_PRECISION_HINT for the layers left in float")
    available: bool = True
    val_auc: float | None = None
    auc_drop: float | None = Field(None, description="f32 val AUC minus this one's")
    max_auc_drop: float | None = None
    passed: bool = False
    reason: str = ""
    threshold: float | None = Field(
        None, ge=0.0, le=1.0, description="on the calibrated scale when calibration is set")
    calibration: Calibration | None = Field(
        None, description="raw output -> served probability, fitted on val; None: raw")
    val: dict[str, Any] = {}
    test: dict[str, Any] = {}
    images_per_s: float | None = Field(None, description="batch 64, measured at export")


class Evidence(_Card):
    """Which patients a split's metrics come from."""

    split: str
    patients: list[str]
    patches: int


class ModelCard(_Card):
    schema_version: Literal[1] = 1
    name: str = Field(description="<arch>-<dataset> unless export.name says otherwise")
    version: int = Field(0, ge=0, description="assigned by the registry (0: not registered)")
    architecture: str
    model_args: dict[str, Any] = {}
    dataset: str
    created: str
    input: Preprocess  # the executable input contract (patchray.inference.preprocess)
    class_names: tuple[str, str] = ("benign", "tumour")
    threshold_rule: dict[str, Any]
    precisions: dict[Precision, PrecisionRecord]
    serving_precision: Precision = Field(
        description="the fastest precision that passed its gate; serving's default")
    metrics: dict[str, Any] = Field(default_factory=dict, description="f32 val and test")
    evidence: list[Evidence] = []
    dataset_manifest_sha256: str = ""
    training_config: dict[str, Any] = {}
    lineage: dict[str, Any] = Field(
        default_factory=dict, description="run folder, checkpoint epoch, weights sha256")
    code_revision: str = "unknown"
    patchray_version: str
    parity: dict[str, Any] = {}
    intended_use: str = ""
    limitations: list[str] = []
    files: dict[str, str] = Field(default_factory=dict, description="file -> sha256")

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def precision(self, which: str = "auto") -> tuple[str, PrecisionRecord]:
        """``auto`` -> the serving precision; otherwise that one, if it passed its gate."""
        name = self.serving_precision if which == "auto" else which
        record = self.precisions.get(name)  # type: ignore[call-overload]
        if record is None or not record.available:
            raise ArtifactError(f"{self.ref}: no {name!r} model; it has "
                                f"{', '.join(p for p, r in self.precisions.items() if r.available)}")
        if not record.passed:
            raise ArtifactError(f"{self.ref}: precision {name!r} failed its gate "
                                f"({record.reason}); use one that passed or 'auto'")
        return name, record

    def threshold(self, which: str = "auto") -> float:
        threshold = self.precision(which)[1].threshold
        assert threshold is not None  # a passed precision always has one
        return threshold

    def calibration(self, which: str = "auto") -> Calibration | None:
        """The map from that precision's raw output to its served probability (None: raw)."""
        return self.precision(which)[1].calibration


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def ir_files(card: ModelCard) -> list[str]:
    """Every file a card's precisions need (``.xml`` and its ``.bin``)."""
    names: set[str] = set()
    for record in card.precisions.values():
        if record.available and record.passed:
            names |= {record.file, str(Path(record.file).with_suffix(".bin"))}
    return sorted(names)


def parse_card(text: str | bytes, *, where: str) -> ModelCard:
    try:
        return ModelCard.model_validate_json(text)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()
        )
        raise ArtifactError(f"{where}: invalid model card ({problems})") from None


def read_card(model_dir: str | Path) -> ModelCard:
    """Load and validate a local version folder's ``card.json``; check its files exist."""
    path = Path(model_dir) / CARD_JSON
    if not path.is_file():
        raise ArtifactError(
            f"{path} not found: {model_dir} is not a complete patchray model (the registry "
            f"writes {CARD_JSON} last)"
        )
    card = parse_card(path.read_bytes(), where=str(path))
    for name in card.files or ir_files(card):
        if not (Path(model_dir) / name).is_file():
            raise ArtifactError(f"{path}: names {name}, which is missing")
    return card


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _calibration_lines(card: ModelCard) -> list[str]:
    """The calibration section: method, parameters and ECE per precision."""
    lines = ["", "## Calibration", ""]
    raw = ("Not calibrated: the probabilities served are the model's raw output, and the "
           "thresholds are on that scale.")
    calibrations = [r.calibration for r in card.precisions.values() if r.calibration]
    if not calibrations:
        return [*lines, raw, ""]
    lines += [raw if all(c.identity for c in calibrations) else
              "Each precision's probability is calibrated by a map fitted on its own validation "
              "scores; the served probability is the calibrated one and the threshold above is on "
              "the calibrated scale.",
              "ECE: expected calibration error, 10 equal-width bins weighted by their share of "
              "the patches (lower is better).", "",
              "| precision | method | fitted on | val ECE raw -> calibrated | "
              "test ECE raw -> calibrated |", "|---|---|---|---|---|"]
    for name, r in card.precisions.items():
        cal = r.calibration
        if cal is None:
            lines.append(f"| {name} | - (raw output) | - | - | - |")
            continue
        ece = [f"{_fmt(e.before)} -> {_fmt(e.after)}" if (e := cal.ece.get(split)) else "-"
               for split in ("val", "test")]
        lines.append(f"| {name} | {cal.describe()} | {cal.fitted_on or '-'} ({cal.n} patches) | "
                     f"{ece[0]} | {ece[1]} |")
    return lines


def render_markdown(card: ModelCard) -> str:
    """``card.md``: the card for people (what, how to feed it, how good, limits, lineage)."""
    c = card.input
    lines = [
        f"# {card.name} v{card.version}",
        "",
        f"{card.architecture} ({card.model_args or 'default arguments'}) trained on "
        f"`{card.dataset}`; created {card.created}; patchray {card.patchray_version}, code "
        f"revision `{card.code_revision}`.",
        "",
        "## Intended use",
        "",
        card.intended_use or "-",
        "",
        "## Limits",
        "",
        *[f"- {limit}" for limit in card.limitations],
        "",
        "## Input contract",
        "",
        f"- patch: {c.size}x{c.size} px, {c.channels} ({c.layout}, {c.dtype}), decode policy "
        f"`{c.decode_policy}`",
        f"- microns per pixel: {c.microns_per_pixel or 'not recorded by the dataset'}",
        *([f"- second input `context` (multi-scale): the same centre covering "
           f"{c.context_scale:g}x the patch's side, shrunk to {c.size}x{c.size} px, scaled "
           "and padded like the patch"] if c.context_scale else []),
        f"- stain normalisation: {c.stain.describe() if c.stain else 'none'}",
        f"- normalisation: pixels x {c.scale:.6g}",
        f"- smaller patches padded {c.pad_rule} with {c.pad_value}; larger ones "
        f"`{c.resize}`",
        f"- classes: 0 = {card.class_names[0]}, 1 = {card.class_names[1]}",
        "",
        "## Precisions",
        "",
        f"Threshold rule: {card.threshold_rule}. Served by default: **{card.serving_precision}**"
        " (the fastest that passed).",
        "",
        "| precision | file | hint | val AUC | drop | gate | threshold | test AUC | test sens | "
        "test spec | images/s (b64) | reason |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in card.precisions.items():
        lines.append(
            f"| {name} | {r.file} | {r.inference_hint} | {_fmt(r.val_auc)} | "
            f"{_fmt(r.auc_drop)} | {'pass' if r.passed else 'FAIL'} | {_fmt(r.threshold)} | "
            f"{_fmt(r.test.get('auc'))} | {_fmt(r.test.get('sensitivity'), 3)} | "
            f"{_fmt(r.test.get('specificity'), 3)} | {_fmt(r.images_per_s, 0)} | "
            f"{r.reason or '-'} |")
    lines += _calibration_lines(card)
    lines += ["", "## Evidence", ""]
    lines += [f"- {e.split}: {e.patches} patches from {len(e.patients)} patients "
              f"({', '.join(e.patients)})" for e in card.evidence]
    lines += ["", "## Lineage", "",
              f"- dataset manifest sha256: `{card.dataset_manifest_sha256}`",
              *[f"- {k}: `{v}`" for k, v in card.lineage.items()],
              f"- parity (Keras vs OpenVINO f32): {card.parity}",
              "", "## Files", "",
              *[f"- `{name}` sha256 `{digest}`" for name, digest in card.files.items()],
              "", "The resolved training config is in card.json (`training_config`).", ""]
    return "\n".join(lines)
