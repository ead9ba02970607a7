"""Log records of one call site built from a template: what ``Logger.makeRecord`` makes, for less.

``LogRecord.__init__`` takes the basename and the extension of the call site's path, the level's name and the
process's name again for every record; the outcome line of every message paid ~3 µs for it, a tenth of its
dispatch. A :class:`RecordTemplate` copies what does not change from a record ``makeRecord`` made once, and sets
what does (the time, the thread, the process, the asyncio task, the arguments) as ``LogRecord.__init__`` sets it:
the record has the same attributes, in the same order, with the same values.

Only for the standard factory: with a custom one (``logging.setLogRecordFactory``), a logger class that overrides
``makeRecord``, or a Python whose records carry attributes this module does not know, ``makeRecord`` makes every
record.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from typing import Any

_STATIC: tuple[str, ...] = ("name", "msg", "levelname", "levelno", "pathname", "filename", "module", "exc_text")
_STATIC += ("stack_info", "lineno", "funcName")
_DYNAMIC: tuple[str, ...] = ("args", "exc_info", "created", "msecs", "relativeCreated", "thread", "threadName")
_DYNAMIC += ("processName", "process") + (("taskName",) if sys.version_info >= (3, 12) else ())
_KNOWN = frozenset(_STATIC + _DYNAMIC)
_TIME_NS = sys.version_info >= (3, 13)
"""Python 3.13 times records with ``time.time_ns()`` (and its ``logging._startTime`` is in nanoseconds)."""
_new_record = logging.LogRecord.__new__
_get_ident = threading.get_ident
_current_thread = threading.current_thread
_running_loop = asyncio._get_running_loop
_START = logging._startTime  # type: ignore[attr-defined]
"""When ``logging`` was imported (set once then): a record's ``relativeCreated`` counts from it."""
_pid = [os.getpid()]
"""This process's id (``os.getpid()`` is a system call), taken again in a forked child."""
os.register_at_fork(after_in_child=lambda: _pid.__setitem__(0, os.getpid()))


class RecordTemplate:
    """The records ``logger.makeRecord(logger.name, level, pathname, 0, msg, args, exc_info, func, extra)`` makes.

    Parameters:
        logger: the logger the records are handled by.
        level: their level.
        pathname: the call site's file (``__file__``).
        func: the call site's function name.
        msg: the format string.
    """

    def __init__(self, logger: logging.Logger, *, level: int, pathname: str, func: str, msg: str) -> None:
        self.logger = logger
        self.level = level
        self.pathname = pathname
        self.func = func
        self.msg = msg
        self._template: dict[str, Any] | None = None
        self._unknown = False

    def record(self, args: tuple[Any, ...], exc_info: Any, extra: dict[str, Any]) -> logging.LogRecord:
        """A record with these arguments, exception and extra attributes, made now in this thread.

        ``args`` must not be a 1-tuple holding a mapping (``LogRecord`` would unpack it), nor ``extra`` name a
        record attribute (``makeRecord`` would refuse it).
        """
        logger = self.logger
        template = self._template
        if template is None or not _standard(logger):
            template = self._made_once() if _standard(logger) else None
            if template is None:
                return logger.makeRecord(
                    logger.name, self.level, self.pathname, 0, self.msg, args, exc_info, self.func, extra
                )
        record = _new_record(logging.LogRecord)
        values = record.__dict__
        values.update(template)  # every attribute in makeRecord's order; the ones set below keep their place
        values["levelname"] = logging.getLevelName(self.level)
        values["args"] = args
        values["exc_info"] = exc_info
        _stamp(values)
        values.update(extra)
        return record

    def _made_once(self) -> dict[str, Any] | None:
        """The attributes of a record ``makeRecord`` made, once; None when they are not the ones this module sets."""
        if self._template is None and not self._unknown:
            logger = self.logger
            sample = logger.makeRecord(logger.name, self.level, self.pathname, 0, self.msg, (), None, self.func)
            if type(sample) is logging.LogRecord and set(vars(sample)) == _KNOWN:
                self._template = dict(vars(sample))
            else:
                self._unknown = True
        return self._template


def _standard(logger: logging.Logger) -> bool:
    """Records are made by the standard factory through ``Logger.makeRecord``."""
    return logging.getLogRecordFactory() is logging.LogRecord and type(logger).makeRecord is logging.Logger.makeRecord


def _stamp(values: dict[str, Any]) -> None:
    """The time, thread, process and task attributes, as ``LogRecord.__init__`` sets them."""
    if _TIME_NS:
        ct = time.time_ns()
        values["created"] = created = ct / 1e9
        msecs = (ct % 1_000_000_000) // 1_000_000 + 0.0
        values["msecs"] = 0.0 if msecs == 999.0 and int(created) != ct // 1_000_000_000 else msecs
        values["relativeCreated"] = (ct - _START) / 1e6
    else:
        now = time.time()
        values["created"] = now
        values["msecs"] = int((now - int(now)) * 1000) + 0.0
        values["relativeCreated"] = (now - _START) * 1000
    if logging.logThreads:
        values["thread"] = _get_ident()
        values["threadName"] = _current_thread().name
    else:
        values["thread"] = values["threadName"] = None
    values["processName"] = _process_name() if logging.logMultiprocessing else None
    values["process"] = _pid[0] if logging.logProcesses else None
    if "taskName" in values:
        values["taskName"] = _task_name() if getattr(logging, "logAsyncioTasks", False) else None


def _process_name() -> Any:
    name: Any = "MainProcess"
    mp = sys.modules.get("multiprocessing")
    if mp is not None:
        try:
            name = mp.current_process().name
        except Exception:  # noqa: BLE001, S110 - as LogRecord: the default name then
            pass
    return name


def _task_name() -> Any:
    """The current asyncio task's name, else None (LogRecord asks ``asyncio.current_task()``, which raises
    outside a running loop, for every record: this asks for the loop first)."""
    if _running_loop() is None:
        return None
    try:
        return asyncio.current_task().get_name()  # type: ignore[union-attr]
    except Exception:  # noqa: BLE001 - as LogRecord: outside a task (None has no name), no task name
        return None
