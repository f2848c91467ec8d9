"""structlog set-up: JSON lines, no patient identifiers (callers log ids, codes and counts only).

Lines go to stderr and, when a file is given (IAP_LOG_FILE), are appended there too (one write per
line, so several processes may share the file). Query strings and bodies are never logged.

Tracebacks that the standard library's logging writes (uvicorn's "Exception in ASGI application", asyncio's
"Unhandled exception" of an MLLP session) keep their frames and each exception's type, not its message
(`WithholdExceptionMessages`): a database error can quote a row's values (PostgreSQL's "DETAIL: Key
(value)=(...) already exists"), a parser's error the input it refused.
"""

from __future__ import annotations

import atexit
import copy
import logging
import sys
import traceback
from pathlib import Path
from typing import Any, TextIO

import structlog

__all__ = ["configure_logging", "WithholdExceptionMessages", "uvicorn_log_config"]


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
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, WithholdExceptionMessages) for f in handler.filters):
            handler.addFilter(WithholdExceptionMessages())
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


class WithholdExceptionMessages(logging.Filter):
    """On a handler: a record's traceback is written with its frames and each exception's type, and no message.

    Sets the record's `exc_text`, which every `logging.Formatter` writes in place of formatting the exception
    itself (also over a text another handler's formatter left on the record). The reference in the gateway's own
    line (`request.crashed`, `mllp.failed`) ties the two together.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = withheld_traceback(record.exc_info[1])
        return True


def withheld_traceback(error: BaseException) -> str:
    """`error`'s traceback (and those of the exceptions that led to it) as Python prints it, each message left out."""
    chain: list[BaseException] = []
    at: BaseException | None = error
    while at is not None and all(at is not seen for seen in chain):
        chain.append(at)
        at = at.__cause__ if at.__cause__ is not None else (None if at.__suppress_context__ else at.__context__)
    parts = []
    for exc in reversed(chain):
        frames = "".join(traceback.format_list(traceback.extract_tb(exc.__traceback__)))
        parts.append(f"Traceback (most recent call last):\n{frames}{_kind(exc)} (message not logged: it may quote patient data)")
    return "\n\nwhich led to:\n\n".join(parts)


def _kind(error: BaseException) -> str:
    name = f"{type(error).__module__}.{type(error).__qualname__}".removeprefix("builtins.")
    if isinstance(error, BaseExceptionGroup):
        name += " of " + ", ".join(_kind(inner) for inner in error.exceptions)
    return name


def uvicorn_log_config() -> dict[str, Any]:
    """uvicorn's own logging set-up, each of its handlers withholding exception messages (`WithholdExceptionMessages`)."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["withhold_exception_messages"] = {"()": WithholdExceptionMessages}
    for handler in config["handlers"].values():
        handler["filters"] = [*handler.get("filters", []), "withhold_exception_messages"]
    return config
