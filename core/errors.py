"""The errors a user can cause. Each says what was wrong and what to do about it.

Everything here derives from :class:`MMAssistError`, so callers (the CLI, the UI) can catch one
type, show its message and keep going. Internal bugs are *not* MMAssistErrors: they keep their
traceback.
"""

from __future__ import annotations


class MMAssistError(Exception):
    """Base class of every error a user can cause (bad config, bad input, missing plugin...)."""


class ConfigError(MMAssistError, ValueError):
    """A configuration value is missing, unknown or out of range. The message names the key path."""


class UnknownNameError(ConfigError):
    """A name (encoder, projector, task...) is not registered; the message lists what is available."""


class PluginError(MMAssistError):
    """A plugin failed to import, register or build, or two plugins claim the same name."""


class MissingPluginError(PluginError):
    """A checkpoint needs an encoder that no installed plugin provides; says what to pip install."""


class UnsupportedInputError(MMAssistError, TypeError):
    """An input of a kind no loaded plugin accepts (wrong Python type or unaccepted MIME type)."""


class PromptTooLongError(UnsupportedInputError):
    """A conversation longer than the model takes (``decoder.max_length``)."""


class UndecodableInputError(MMAssistError, ValueError):
    """An input of an accepted kind whose bytes cannot be decoded (empty, truncated, corrupt)."""


class DataFormatError(MMAssistError, ValueError):
    """A dataset file is malformed. The message gives the file and, where it applies, the line."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None):
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message)
        self.path = path
        self.line = line
