"""Where a line for the user goes: the run's log files only (the console already shows it, as
an error line or a progress bar). Torch-free: the entry points use it before validation."""

from __future__ import annotations

import logging

log = logging.getLogger("sam_train")


def to_log_files(message: str, level: int = logging.INFO) -> None:
    """Write ``message`` to every log file handler (``train.log``), not to the console."""
    record = log.makeRecord(log.name, level, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers + log.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
