"""Errors that name the problem and the fix."""


class UntwineError(ValueError):
    """Base class of every error untwine raises on bad input.

    The message always says what was found, what was expected and how to fix it.
    """


class ConfigError(UntwineError):
    """A config key, value or type is wrong."""


class DataError(UntwineError):
    """A dataset, file, array or request for samples is wrong."""


class CheckpointError(UntwineError):
    """A checkpoint is missing, incomplete or corrupt."""
