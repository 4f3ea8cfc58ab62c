"""The exported model artifact and its metadata (no TensorFlow, no OpenVINO imports).

An artifact is a folder ``<name>/<version>/`` holding ``model.xml``/``model.bin`` (OpenVINO
IR, FP32) and ``metadata.json``: the model's input contract, class names, decision
threshold and metrics. Serving reads everything it needs from here, never from code.
``metadata.json`` is written once, last, after evaluation chose the threshold, so its
presence marks a complete artifact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from patchray.errors import ArtifactError
from patchray.inference.preprocess import Preprocess

METADATA_FILE = "metadata.json"
IR_FILES = {"fp32": "model.xml", "int8": "model-int8.xml"}


class ModelMetadata(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    schema_version: Literal[1] = 1
    name: str
    version: str
    architecture: str
    model_args: dict[str, Any] = {}
    dataset: str
    created: str
    input: Preprocess  # the executable input contract (patchray.inference.preprocess)
    class_names: tuple[str, str] = ("benign", "tumour")
    threshold: float = Field(ge=0.0, le=1.0)
    threshold_rule: dict[str, Any]
    metrics: dict[str, Any] = {}
    files: dict[str, str] = Field(description="precision -> IR xml file name")
    parity: dict[str, Any] = {}
    patchray_version: str


def write_metadata(model_dir: str | Path, metadata: ModelMetadata) -> Path:
    path = Path(model_dir) / METADATA_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(metadata.model_dump(mode="json"), indent=2))
    tmp.replace(path)
    return path


def read_metadata(model_dir: str | Path) -> ModelMetadata:
    """Load and validate ``metadata.json``; also check the IR files it names exist."""
    path = Path(model_dir) / METADATA_FILE
    if not path.is_file():
        raise ArtifactError(
            f"{path} not found: {model_dir} is not a complete patchray model artifact "
            "(export writes metadata.json last)"
        )
    try:
        metadata = ModelMetadata.model_validate_json(path.read_text())
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()
        )
        raise ArtifactError(f"{path}: invalid metadata ({problems})") from None
    for precision, name in metadata.files.items():
        if not (Path(model_dir) / name).is_file():
            raise ArtifactError(f"{path}: files.{precision} names {name}, which is missing")
    return metadata
