"""Every error a user of the training side can fix, under one base class.

Each carries a ``hint`` (what to do about it; the message-and-hint base is shared with the
device side). ``nin-pipeline`` catches :class:`PipelineError` — and the device side's
``EdgeAppError``, whose readers it uses — in one place and prints ``message; hint`` on one
line with a non-zero exit.
"""

from __future__ import annotations

from edge_app.errors import HintedError


class PipelineError(HintedError):
    """The training side's base: every error of pipeline a user can fix (``message``, ``hint``)."""


class DataError(PipelineError):
    """A dataset that cannot be found or read."""


class RunError(PipelineError):
    """A run folder that is missing, incomplete, damaged or was started with other settings."""


class TrainingError(PipelineError):
    """Training went wrong in a way the settings can fix (e.g. the loss became NaN)."""


class ReportError(PipelineError):
    """A report input that is missing, corrupt or does not match the data."""


class EdgeTpuError(PipelineError):
    """The Edge TPU compiler is missing, failed or timed out, or a model cannot be checked."""


class PackageError(PipelineError):
    """A device bundle that cannot be made."""


class ClientsError(PipelineError):
    """The model for MediaPipe / the Task Library cannot be made or checked (its writer's environment)."""
