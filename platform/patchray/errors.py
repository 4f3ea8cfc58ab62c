"""Domain exceptions. Every message names the file or field at fault and what was expected.

Everything a user can cause or fix is a :class:`PatchrayError`; the CLI prints its message
(no traceback) and exits 2. Anything else is a bug, and the CLI says where the traceback is.
"""

from __future__ import annotations


class PatchrayError(Exception):
    """Base class for all errors patchray raises on purpose."""


class ConfigError(PatchrayError):
    """A job spec or override is invalid (unknown key, wrong type, bad value)."""


class DataError(PatchrayError):
    """A dataset, patch file or Parquet file does not match what patchray expects."""


class SplitLeakError(DataError):
    """A patient appears in more than one split."""


class UnknownModelError(PatchrayError, KeyError):
    """A model name is not in the registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ArtifactError(PatchrayError):
    """A model folder is missing files or has an invalid model card."""


class ParityError(ArtifactError):
    """The exported model's outputs differ from the trained model's beyond the tolerance."""


class TrainingError(PatchrayError):
    """Training failed on the cluster (the message says where its logs are)."""


class ServiceError(PatchrayError):
    """The model service could not be started or did not answer."""


class StorageError(PatchrayError):
    """A storage URI cannot be resolved or accessed."""


class NotFoundError(StorageError):
    """The object or file at a URI does not exist (its bucket does)."""


class RegistryError(PatchrayError):
    """A model reference, version or alias does not exist or cannot move as asked."""


class IntegrityError(ArtifactError):
    """A registered model's files do not match the sha256 its card recorded."""


class ClusterError(PatchrayError):
    """A Ray cluster cannot be reached, refuses a request (e.g. its token), or has no such job."""
