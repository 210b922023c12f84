"""Errors that reach the user as a message, not a traceback."""

from __future__ import annotations


class ZireliaError(Exception):
    """A failure the user can act on: `message` says what happened, `hint` what to do about it."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class ConfigError(ZireliaError):
    """The config file is missing, unreadable or invalid (exit code 2, like a usage error)."""

    exit_code = 2


class UsageError(ZireliaError):
    """A path given on the command line or as the run directory cannot be used: the command could not start
    (exit code 2, like ConfigError; the message names the path, what is wrong with it and what to give)."""

    exit_code = 2
