"""structlog set-up: JSON lines, no patient identifiers (callers log ids, codes and counts only).

Lines go to stderr and, when a file is given (IAP_LOG_FILE), are appended there too (one write per
line, so several processes may share the file). Query strings and bodies are never logged.
"""

from __future__ import annotations

import atexit
import logging
import sys
from pathlib import Path
from typing import Any, TextIO

import structlog

__all__ = ["configure_logging"]


class _TeeLogger:
    """structlog's PrintLogger, to stderr (looked up per call, so a redirected stream is honoured) and a file."""

    def __init__(self, file: TextIO | None) -> None:
        self.file = file

    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)
        if self.file is not None and not self.file.closed:
            self.file.write(message + "\n")
            self.file.flush()

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


_files: dict[Path, TextIO] = {}


@atexit.register
def _close_files() -> None:
    for file in _files.values():
        file.close()
    _files.clear()


def _open(path: Path) -> TextIO:
    if path not in _files:
        path.parent.mkdir(parents=True, exist_ok=True)
        _files[path] = path.open("a", encoding="utf-8", buffering=1)
    return _files[path]


def configure_logging(level: str = "INFO", json_logs: bool = True, file: Path | None = None) -> None:
    logging.basicConfig(format="%(message)s", stream=sys.stderr, level=getattr(logging, level.upper(), logging.INFO))
    renderer: structlog.typing.Processor = structlog.processors.JSONRenderer() if json_logs else structlog.dev.ConsoleRenderer(colors=False)
    sink = _TeeLogger(_open(file) if file else None)

    def factory(*_args: Any) -> _TeeLogger:
        return sink

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper(), logging.INFO)),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )
