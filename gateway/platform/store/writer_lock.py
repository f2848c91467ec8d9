"""One writing transaction at a time on a SQLite file (`SqliteWriterLock`), and `write_transaction`, which takes it."""

from __future__ import annotations

import fcntl
import os
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from weakref import WeakKeyDictionary

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker


class WriterLockTimeout(OperationalError):
    """A write waited longer than the store allows (`IAP_DB_STATEMENT_TIMEOUT_MS`) for a SQLite file's writer lock:
    another thread or process wrote, or held the lock, all that time (a CLI command suspended with Ctrl-Z, say).
    An OperationalError, so it is answered like any other wait that ran out (`store_unavailable`: HTTP 503, AR)."""

    def __init__(self, path: str | None, seconds: float | None) -> None:
        where = f"the writer lock {path}" if path else "the writer lock"
        waited = "" if seconds is None else f" {seconds:g} s"
        super().__init__(None, None, TimeoutError(f"waited{waited} for {where}; another writer held it all that time"))


class SqliteWriterLock:
    """One writing transaction at a time on a SQLite file, across the threads of a process and the processes
    of a host (`serve --workers N`, the CLI): a thread lock, then an exclusive `flock` on `<db>-writer.lock`.

    SQLite has one writer. Without this, writers that meet its lock sleep in its busy handler (1, 2, 5,
    10, ... 100 ms steps) and some waited seconds under load (bench/README.md); here they queue in the
    kernel and start as soon as the writer before them commits. Re-entrant within a thread. A store with
    no file (in-memory) needs only the thread lock.

    `timeout` (seconds; None = no limit): how long a write waits for both, after which it fails with
    `WriterLockTimeout`. Without it, a process holding the file's lock (a CLI command suspended with Ctrl-Z) held
    every writer of the gateway (its ingest, MLLP, safety-call ticks) for as long as it lasted.
    """

    def __init__(self, path: str | None, timeout: float | None) -> None:
        self._thread = threading.RLock()
        self._path = path
        self._timeout = timeout
        self._file: _FileLock | None = None
        self._depth = 0

    def __enter__(self) -> None:
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        if not self._thread.acquire(timeout=-1 if self._timeout is None else self._timeout):
            raise WriterLockTimeout(self._path, self._timeout)
        self._depth += 1
        if self._depth == 1 and self._path is not None:
            try:
                self._file_lock().acquire(deadline)
            except BaseException:
                self._depth -= 1
                self._thread.release()
                raise

    def __exit__(self, *_exc: object) -> None:
        try:
            if self._depth == 1 and self._file is not None:
                self._file.release()
        finally:
            self._depth -= 1
            self._thread.release()

    def _file_lock(self) -> _FileLock:
        if self._file is None or self._file.pid != os.getpid():  # a forked child opens its own (flock belongs to the open file)
            self._file = _FileLock(self._path or "", self._timeout)
        return self._file


class _FileLock:
    """The exclusive `flock` on a file, waited for until a deadline.

    flock has no timed wait, and trying it again and again (LOCK_NB) loses to a busy process that takes it back the
    moment it lets it go (the worker processes of `serve --workers N` share the file). So the wait is the kernel's,
    in a thread of this lock's own (the waiter), and a writer waits for the waiter's word until its deadline. A writer
    that gives up leaves the waiter waiting; the next writer of this process takes that wait over, and if none has
    come by the time the waiter gets the lock, the waiter lets it go at once. Only a lock found taken needs the waiter.
    """

    FREE, WANTED, ABANDONED, HELD = range(4)
    WAITER_IDLE_SECONDS = 5.0  # a waiter with nothing to do for this long ends (the next wait starts another)

    def __init__(self, path: str, timeout: float | None) -> None:
        self.pid = os.getpid()
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        weakref.finalize(self, os.close, self._fd)  # closed with the engine's lock
        self._path, self._timeout = path, timeout
        self._state = self.FREE
        self._waiter: threading.Thread | None = None
        self._changed = threading.Condition()

    def acquire(self, deadline: float | None) -> None:
        with self._changed:
            if self._state == self.FREE:  # not FREE: ABANDONED, the waiter still waiting for it
                try:
                    fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    self._state = self.HELD
                    return
                except BlockingIOError:
                    pass
            self._state = self.WANTED
            if self._waiter is None:
                self._waiter = threading.Thread(target=self._wait, name="iap-sqlite-writer-lock", daemon=True)
                self._waiter.start()
            self._changed.notify_all()
            try:
                while self._state != self.HELD:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise WriterLockTimeout(self._path, self._timeout)
                    self._changed.wait(left)
            except BaseException:  # out of time, or interrupted: the waiter lets the lock go when it gets it
                self._state = self.ABANDONED
                raise

    def release(self) -> None:
        with self._changed:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            self._state = self.FREE

    def _wait(self) -> None:
        """The waiter: takes the file's lock in the kernel's queue whenever a writer wants it."""
        while True:
            with self._changed:
                if not self._changed.wait_for(lambda: self._state == self.WANTED, self.WAITER_IDLE_SECONDS):
                    if self._state == self.ABANDONED:  # given up before this thread began to wait for it
                        self._state = self.FREE
                    self._waiter = None
                    return
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            with self._changed:
                if self._state == self.WANTED:
                    self._state = self.HELD
                    self._changed.notify_all()
                else:  # ABANDONED: the writer gave up and no other has come
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
                    self._state = self.FREE


_SQLITE_WRITERS: WeakKeyDictionary[Engine, SqliteWriterLock] = WeakKeyDictionary()


@contextmanager
def write_transaction(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """`sessions.begin()` for a transaction that writes; on SQLite, one such transaction at a time on the file
    (`SqliteWriterLock`: threads and worker processes queue for it). PostgreSQL: no lock."""
    engine = sessions.kw.get("bind")
    lock = _SQLITE_WRITERS.get(engine) if isinstance(engine, Engine) else None
    with lock or nullcontext(), sessions.begin() as session:
        yield session
