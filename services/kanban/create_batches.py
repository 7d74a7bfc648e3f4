"""Group commit for CreateTask: creates that arrive together share one transaction.

A create is a handful of round trips to the database while its transaction
is open (read, insert the task, insert its event, notify, commit), and
under load those, not the rows, are its cost: 8 clients creating on
PostgreSQL ran at ~145/s one transaction each. Here the first create to
arrive writes at once; creates arriving while it writes queue, and the next
of them writes the whole queue (up to :data:`MAX_BATCH`) in one transaction
(:func:`services.kanban.store.creates.create_many`). Nobody waits for a
timer: alone a create costs what it did, and under load a batch costs
little more than one create.

Each create keeps its own answer: a create the store refuses is refused
alone. Should the transaction itself fail, a batch of more than one is
written again one create at a time, so that one create's conflict (the
same ``request_id`` committed meanwhile by another replica) never fails
its neighbours; a database outage fails each of them as it would alone.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError

from services.kanban.db import Database
from services.kanban.store import Effects, creates
from services.kanban.store.creates import Created, NewTask
from services.runtime.errors import Aborted

log = logging.getLogger(__name__)

#: Most creates written in one transaction.
MAX_BATCH = 64
_INTERRUPTED = "CreateTask: its write was interrupted; retry with the same request_id"


@dataclass
class _Waiting:
    item: NewTask
    answer: Created | BaseException | None = None
    done: bool = False


class CreateBatcher:
    """Write CreateTask requests in shared transactions, answering each on its own.

    Args:
        db: The database.
        source: The source of the ``created`` events.
        after: Called with a committed transaction's effects (the servicer
            wakes the dispatcher), on the thread that wrote it.
    """

    def __init__(self, db: Database, *, source: str, after: Callable[[Effects], None]) -> None:
        self._db = db
        self._source = source
        self._after = after
        self._lock = threading.Condition()
        self._queue: deque[_Waiting] = deque()
        self._writing = False

    @property
    def queued(self) -> int:
        """Creates waiting for the transaction in flight to end."""
        with self._lock:
            return len(self._queue)

    def create(self, item: NewTask) -> Created:
        """Create (or find) one task; returns once its transaction has committed.

        Raises:
            services.runtime.errors.ServiceError: The store refused this create.
            sqlalchemy.exc.SQLAlchemyError: The database failed its transaction.
        """
        mine = _Waiting(item)
        with self._lock:
            self._queue.append(mine)
            while self._writing and not mine.done:
                self._lock.wait()
            if not mine.done:
                self._writing = True
                batch = [self._queue.popleft() for _ in range(min(MAX_BATCH, len(self._queue)))]
        if not mine.done:
            try:
                self._write(batch)
            finally:
                with self._lock:
                    for waiting in batch:
                        if waiting.answer is None:  # the writer itself was interrupted
                            waiting.answer = Aborted(_INTERRUPTED)
                        waiting.done = True
                    self._writing = False
                    self._lock.notify_all()
        answer = mine.answer
        if isinstance(answer, Created):
            return answer
        raise answer if answer is not None else Aborted(_INTERRUPTED)

    def _write(self, batch: list[_Waiting]) -> None:
        """Give every create of ``batch`` its answer (never raises)."""
        try:
            self._commit(batch)
        except IntegrityError:
            if len(batch) == 1:
                # A unique key committed by another writer since this one read
                # (the same request_id from two replicas): once more, and the
                # read now finds that task.
                try:
                    self._commit(batch)
                except IntegrityError:
                    batch[0].answer = Aborted(
                        "CreateTask: a concurrent write conflicted; retry with the same request_id"
                    )
                except Exception as again:  # handed to the caller
                    batch[0].answer = again
                return
            for waiting in batch:
                self._write([waiting])
        except Exception as err:  # every caller gets the database's error
            for waiting in batch:
                waiting.answer = err

    def _commit(self, batch: list[_Waiting]) -> None:
        effects = Effects()
        with self._db.write() as s:
            answers = creates.create_many(
                s, [w.item for w in batch], source=self._source, effects=effects
            )
        for waiting, answer in zip(batch, answers, strict=True):
            waiting.answer = answer
        # Committed: a failure from here on must not become the creates' answer
        # (a caller told "failed" would create again).
        try:
            self._after(effects)
        except Exception:
            log.exception("applying the effects of %d creates failed", len(batch))


__all__ = ["CreateBatcher"]
