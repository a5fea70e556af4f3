"""User-facing errors.

Every error a user can cause with bad input (a file, a config key, a checkpoint)
is a :class:`Pc3dError`. The CLI prints its message on one line and exits with
status 2; library callers can catch the specific subclass.
"""


class Pc3dError(Exception):
    """Base class for errors caused by user input; the message is shown as-is."""


class DataFormatError(Pc3dError, ValueError):
    """A data file is missing, truncated or malformed. The message names the file."""


class ConfigError(Pc3dError, ValueError):
    """A configuration value is unknown, missing or out of range."""


class CheckpointError(Pc3dError, ValueError):
    """A checkpoint is missing, corrupt or does not match the architecture."""


class StorageError(Pc3dError, OSError):
    """Writing failed: no space left, a read-only or unwritable location. The message names the file."""
