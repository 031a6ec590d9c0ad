"""Errors a user can cause: each carries one line saying what is wrong and what to do.

The CLI prints ``error: <message>`` (and ``  fix: <hint>`` folded into the same line) with exit
code 1 and no traceback unless ``-v`` is given. Bugs are not VoiceLabErrors and keep their
traceback.
"""

from __future__ import annotations


class VoiceLabError(Exception):
    """A problem the user can fix. ``hint`` says how, in one short sentence."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ConfigError(VoiceLabError):
    """A bad option, config file or workspace setting."""


class WorkspaceError(VoiceLabError):
    """The voice workspace is missing, incomplete or inconsistent."""


class InputError(VoiceLabError):
    """Bad input data: a missing folder, no audio, an unreadable list file."""


class VendorError(VoiceLabError):
    """An upstream checkout is missing, dirty, unpinned or broken."""


class ModelError(VoiceLabError):
    """A model file is missing, incomplete or of the wrong shape."""


class EnvironmentProblem(VoiceLabError):
    """A missing program, package, GPU or network."""


class StageError(VoiceLabError):
    """A pipeline stage failed."""
