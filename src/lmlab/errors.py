"""User-facing errors. Each message names the file/key/value at fault and the fix, in one paragraph.

The entry point prints these without a traceback (set HYDRA_FULL_ERROR=1 to see one) and exits 2.
"""

from __future__ import annotations


class LmlabError(Exception):
    """An error the user can fix; the message says what and how."""

    exit_code = 2


class ConfigError(LmlabError):
    """The composed config is invalid (bad value, conflicting options)."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"Invalid configuration ({len(problems)} problem(s)):\n{lines}")


class DataError(LmlabError):
    """A data file is missing, unreadable or does not match the config."""


class ModelLoadError(LmlabError):
    """A model or tokenizer cannot be found or loaded."""


class CheckpointError(LmlabError):
    """A checkpoint is missing, corrupt, unsafe or does not match the config."""


class RunDirError(LmlabError):
    """The run directory cannot be used (exists, not writable, incomplete)."""


class TrainingError(LmlabError):
    """Training cannot go on (e.g. the loss or gradients became NaN/inf); the last good checkpoint is kept."""
