"""The run's ``train.log`` handler (``configs/hydra/job_logging``): Hydra's file handler,
opened at the first record (a run that logs nothing to it, such as a complete run resumed,
leaves the folder untouched), and quiet when the disk refuses a write: one warning line on
stderr, then the log goes on to the console only, instead of ``logging``'s traceback for
every record. Records marked :data:`CONSOLE_ONLY` are not written to the file."""

from __future__ import annotations

import contextlib
import logging
import sys

#: ``log.info(..., extra=CONSOLE_ONLY)``: for the console, not the run folder.
CONSOLE_ONLY = {"console_only": True}


class RunLogFile(logging.FileHandler):
    def __init__(self, filename: str, mode: str = "a", errors: str | None = None) -> None:
        super().__init__(filename, mode, encoding="utf-8", delay=True, errors=errors)
        self.failed = False

    def filter(self, record: logging.LogRecord) -> bool:
        return not (self.failed or getattr(record, "console_only", False)) and super().filter(
            record
        )

    def handleError(self, record: logging.LogRecord) -> None:
        """The first failed write is reported in one line; the file is then given up."""
        err = sys.exc_info()[1]
        if self.failed or not isinstance(err, OSError):
            return super().handleError(record)
        self.failed = True
        reason = err.strerror or err
        print(
            f"sam-train: warning: cannot write {self.baseFilename} ({reason}): the log goes to "
            "the console only",
            file=sys.stderr,
        )
        stream, self.stream = self.stream, None
        if stream is not None:
            with contextlib.suppress(OSError):  # what it held is what could not be written
                stream.close()
