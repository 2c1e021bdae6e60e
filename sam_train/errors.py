"""Errors a user can fix. Kept free of heavy imports so the CLI reports them fast.

The CLI prints any ``SamTrainError`` as one line on stderr and exits with code 2.
"""


class SamTrainError(Exception):
    """Base of every error caused by input (config, data, checkpoint) rather than a bug."""


class ConfigError(SamTrainError, ValueError):
    """A configuration value to change; the message names the key."""


class DatasetError(SamTrainError, RuntimeError):
    """Data missing or malformed; the message names the path and the files expected."""


class CheckpointError(SamTrainError, RuntimeError):
    """A checkpoint that cannot be used; the message names the file and the reason."""


class NonFiniteError(SamTrainError, FloatingPointError):
    """Training diverged: too many consecutive steps with a non-finite loss or gradient."""


class Preempted(SamTrainError):
    """SIGTERM/SIGUSR1 arrived: the run saved a checkpoint and stops for ``resume=auto``."""


class RunFolderError(SamTrainError, RuntimeError):
    """A run folder that this run may not use; the message names it and what to change."""


class RunFolderBusy(RunFolderError):
    """Another live sam-train process holds the run folder's lock."""


class PathError(SamTrainError, ValueError):
    """A path argument that names nothing, or the wrong kind of thing (a folder for a file)."""
