"""Exceptions that carry what a user needs to fix the problem."""

from __future__ import annotations


class MercoreError(Exception):
    """Base class of every error mercore raises on purpose."""


class ConfigError(MercoreError):
    """A recipe or an override is invalid. ``problems`` lists every problem found, not just the first."""

    def __init__(self, problems: list[str] | str, source: str | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        head = f"{len(self.problems)} problem(s) in {source}" if source else f"{len(self.problems)} problem(s)"
        super().__init__(head + ":\n" + "\n".join(f"  - {p}" for p in self.problems))


class RegistryError(MercoreError):
    """A component name is unknown, duplicated, or its plugin is missing."""


class DataError(MercoreError):
    """A data file is missing, corrupt or inconsistent. The message names file, dialogue and field."""


class CheckpointError(MercoreError):
    """A checkpoint is missing, truncated, corrupted or does not match the model."""


class TrainingError(MercoreError):
    """Training cannot go on (for example a NaN loss)."""


class OutputDirError(ConfigError):
    """The run directory cannot be used: another run holds it, it is not writable, or it is empty.

    A user error (the CLI exits 2): the message names the folder and, for a busy folder, the run that holds it.
    """

    def __init__(self, message: str):
        super().__init__([message])


class StorageError(MercoreError):
    """Writing a run's files failed (disk full, read-only or vanished folder, I/O error).

    The message names the path, the bytes the write needed and the bytes free; the partial write is removed,
    so the run resumes with ``resume=true`` once the cause is fixed.
    """
