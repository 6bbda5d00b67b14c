"""Errors with one-line messages that name the file / line / field at fault."""

from __future__ import annotations


class PixelLMError(Exception):
    """Base class for user-facing errors (the CLI prints them as one line, no traceback)."""


class DataError(PixelLMError):
    """A data file, record or field is malformed. The message names where."""

    def __init__(self, message: str, *, path: str | None = None, record: str | int | None = None):
        where = ""
        if path is not None:
            where = str(path)
            if record is not None:
                where += f":{record}"
            where += ": "
        super().__init__(where + message)
        self.path = path
        self.record = record


class ConfigError(PixelLMError):
    """A configuration value is invalid."""


class InputError(PixelLMError):
    """A model input (tensor shape, mask count, image) is invalid."""
