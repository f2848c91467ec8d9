"""Group commit on SQLite: messages waiting for the file's one writer are committed together.

A SQLite file has one writer (`gateway.platform.store.db.SqliteWriterLock`), and each message's transaction
held it for its statements, its commit (the WAL frames and the fsync of `synchronous=FULL`) and the
hand-over to the next writer. Under load that lock, more than the CPU, was what ingest waited for
(bench/README.md). Here the messages of one worker process that are waiting for it at the same
moment share one transaction:

- each message's work runs in the context of the request that sent it (who is acting, for its
  AuditEvent and the logs) and ends with its own AuditEvent (`close`: gateway.platform.audit.close_work);
- one COMMIT (one fsync) for all of them, and only then does any of them get its reply: nothing is
  acknowledged before it is on disk. If the COMMIT fails, or a statement waits its whole time for the file's
  lock (held elsewhere: `store_timed_out`), none of them is stored and each gets the error at once;
- if one message's work fails (a racing copy of it, an identifier held by another resource, ...),
  the shared transaction is rolled back and each message of the batch is written again in a
  transaction of its own, so that only the failing one fails and the others are stored as if the
  batch had never been. The work is a function of the message alone (`gateway.platform.messages.commit_message`
  already runs it again after a lost race), so running it again changes nothing.

The first thread to find no batch being written writes one: the messages queued until then (its own
and those of threads that came while the batch before was being written), up to `max_batch`. A
message with no other waiting is written alone, exactly as without this. The busier the store, the
more messages share each commit, so the cost per message falls as the load rises.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from sqlalchemy.orm import Session, sessionmaker

from gateway.platform.store.failures import store_timed_out
from gateway.platform.store.writer_lock import write_transaction

__all__ = ["GroupCommit", "MAX_BATCH"]

T = TypeVar("T")
_NO_RESULT: Any = object()  # a waiting work's result until it has one (work may return None)
MAX_BATCH = 32  # messages per commit at most; a process works on IAP_INGEST_CONCURRENCY messages at once, so rarely reached


class _Waiting(Generic[T]):
    __slots__ = ("work", "context", "result", "error", "done")

    def __init__(self, work: Callable[[Session], T]) -> None:
        self.work = work
        self.context = contextvars.copy_context()  # the sender's: who is acting, for the AuditEvent and the logs
        self.result: T = _NO_RESULT
        self.error: BaseException | None = None
        self.done = False


class GroupCommit:
    """`run(work)`: `work(session)` in a write transaction, committed together with other threads' waiting work.

    Each transaction is a `write_transaction` (on SQLite: the file's writer lock). `close(session)`:
    called after each piece of work inside a shared transaction (its AuditEvent). `committed(n)`: told
    how many messages each commit held (the `iap_store_commit_messages` histogram).
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        close: Callable[[Session], None],
        committed: Callable[[int], None],
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._sessions = sessions
        self._close = close
        self._committed = committed
        self._max_batch = max_batch
        self._queue: list[_Waiting[Any]] = []
        self._writing = False  # a batch is being written (one at a time in this process)
        self._changed = threading.Condition()  # guards both; notified when a batch is done

    def run(self, work: Callable[[Session], T]) -> T:
        waiting = _Waiting(work)
        with self._changed:
            self._queue.append(waiting)
        while True:
            with self._changed:
                while self._writing and not waiting.done:
                    self._changed.wait()
                if waiting.done:  # written in another thread's batch (woken as soon as it was, not after the next)
                    break
                self._writing = True  # this thread writes the next batch: the work queued until now, oldest first
                batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
            try:
                self._write(batch)
            finally:
                with self._changed:
                    self._writing = False
                    self._changed.notify_all()
        if waiting.error is not None:
            raise waiting.error
        return waiting.result

    def queued(self) -> int:
        """Work waiting for a batch (not yet being written)."""
        with self._changed:
            return len(self._queue)

    def _write(self, batch: list[_Waiting[Any]]) -> None:
        try:
            if len(batch) > 1:
                try:
                    self._together(batch)
                    return
                except _OneFailed:  # rolled back, nothing of the batch stored: each on its own, so only that one fails
                    pass
            for waiting in batch:
                waiting.context.run(self._alone, waiting)
        except BaseException as exc:  # not an error of one sender's work (KeyboardInterrupt, ...): none is left without an answer
            for waiting in batch:
                if waiting.error is None and waiting.result is _NO_RESULT:
                    waiting.error = exc
            raise
        finally:
            for waiting in batch:
                waiting.done = True

    def _together(self, batch: list[_Waiting[Any]]) -> None:
        results: list[Any] = []
        try:
            with write_transaction(self._sessions) as session:
                for waiting in batch:
                    results.append(waiting.context.run(self._one, session, waiting))
        except _OneFailed:
            raise
        except Exception as exc:  # the COMMIT failed, or the file's lock: none of the batch is stored, each sender is told
            for waiting in batch:
                waiting.error = exc
            return
        self._committed(len(batch))
        for waiting, result in zip(batch, results, strict=True):
            waiting.result = result

    def _one(self, session: Session, waiting: _Waiting[Any]) -> Any:
        try:
            result = waiting.work(session)
            self._close(session)
            return result
        except Exception as exc:
            if store_timed_out(exc):  # the file locked elsewhere all that time: the batch's failure, not this work's,
                raise  # so each sender is told at once (written alone, each would wait as long again in turn)
            raise _OneFailed() from exc

    def _alone(self, waiting: _Waiting[Any]) -> None:
        try:
            with write_transaction(self._sessions) as session:
                waiting.result = waiting.work(session)
        except Exception as exc:
            waiting.result, waiting.error = _NO_RESULT, exc
            return
        self._committed(1)


class _OneFailed(Exception):
    """A sender's work failed inside a shared transaction, which is then rolled back as a whole."""
