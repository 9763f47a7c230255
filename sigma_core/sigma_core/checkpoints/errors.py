"""The errors every checkpoint reader raises, and the path type they take."""
from __future__ import annotations

import os
from typing import Union

PathLike = Union[str, os.PathLike]


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the model; the message names the file/key and what to do."""


class LfsPointerError(CheckpointError):
    """The file is a Git LFS pointer, not the checkpoint it points to."""


class NotOurCheckpointError(CheckpointError):
    """The file holds weights but not our format (e.g. a published Sigma or VMamba checkpoint)."""


class DatasetNeededError(CheckpointError):
    """A published Sigma checkpoint was given without the dataset that supplies its classes and input handling."""


class ArchitectureMismatchError(CheckpointError):
    """The file holds another Sigma architecture than the model it is loaded into; ``held`` and ``built`` describe
    the two, ``fields`` names the configuration fields that differ."""

    def __init__(self, message: str, held: str, built: str, fields: tuple[str, ...]):
        super().__init__(message)
        self.held, self.built, self.fields = held, built, fields
