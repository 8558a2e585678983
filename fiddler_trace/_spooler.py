"""What the worker does with the spool: keep batches it cannot deliver, replay them later.

Kept: batches past ``retry_deadline`` while the server fails, the backlog while the buffer fills
during an outage, and whatever is left when the exit bound runs out. Replayed: at first use, and
when a delivery succeeds after failures, one record at a time, oldest first, each acknowledged on
disk only once the server took all of it.

Order: once a model has batches on disk, this process's updates for that model go to disk too,
behind them, until replay has caught up; so a PATCH never overtakes the POST of its event, even
through the spool.
"""

from __future__ import annotations

import logging
from typing import Optional

from fiddler_trace._encoded import PATCH, Batch
from fiddler_trace._spool import Record, Spool
from fiddler_trace._stats import Stats

__all__ = ["ReplayMark", "Spooler"]

RETRY_REPLAY = 5.0  # seconds between looks at a spool another process is replaying

logger = logging.getLogger("fiddler_trace")


class ReplayMark:
    """Ties the parts of a replayed record together: ack once every part is resolved."""

    __slots__ = ("broken", "parts", "record")

    def __init__(self, record: Record) -> None:
        self.record = record
        self.parts = 1
        self.broken = False  # a part failed transiently: the record stays on disk


class Spooler:
    """The worker's side of the spool. Worker thread only."""

    def __init__(self, spool: Spool, stats: Stats) -> None:
        self.spool = spool
        self.stats = stats
        self.models: set[str] = set()  # models with batches of ours on disk, not yet replayed
        self.replaying = True  # replay at first use
        self.in_flight: Optional[ReplayMark] = None
        self._retry_at = 0.0

    def keep(self, batch: Batch) -> bool:
        """Write the batch to disk; False if that failed (the caller counts it as failed)."""
        try:
            data = batch.data
            # Offsets unknown (an invalid orjson.Fragment among the values): any that the
            # reader rejects, so that it looks for them again, as here.
            ends = batch.offsets() or [len(data)] * len(batch)
            evicted = self.spool.append(batch.method, batch.model_id, batch.event_ids(), ends, data)
        except OSError as error:
            self.stats.last_error = f"spool: {error}"
            logger.warning(
                "fiddler_trace: cannot write to the spool %s: %s", self.spool.directory, error
            )
            return False
        self.stats.spooled += len(batch)
        self.models.add(batch.model_id)
        if evicted:
            Stats.add(self.stats.dropped, evicted)
            logger.warning(
                "fiddler_trace: spool over its size limit; dropped %d events of its oldest "
                "segments",
                evicted,
            )
        return True

    def must_follow(self, batch: Batch) -> bool:
        """An update batch whose model has publishes on disk must be written behind them."""
        return batch.method == PATCH and batch.model_id in self.models

    def start_replay(self) -> None:
        """Delivery works again: make this process's own segment replayable and replay."""
        self.spool.rotate()
        self.replaying = True

    def stop_replay(self) -> None:
        """The server fails again: pause; progress so far is kept."""
        self.replaying = False
        self.spool.release()

    def next_batch(self, now: float) -> Optional[Batch]:
        """The next spooled record as a batch, when replaying and none is in flight."""
        if not self.replaying and self.models and now >= self._retry_at:
            self.start_replay()  # our batches are still on disk: look again
        if not self.replaying or self.in_flight is not None:
            return None
        try:
            record = self.spool.next_record()
        except OSError as error:
            self.stats.last_error = f"spool: {error}"
            record = None
        if record is None and self.spool.has_own_data():
            self.spool.rotate()  # written while replaying (updates behind their publishes)
            record = self.spool.next_record()
        if record is None:
            self.replaying = False
            if self.spool.own_on_disk():
                # Another process replays this directory now (or a segment of ours waits):
                # our updates keep going behind our publishes until they are all sent.
                self._retry_at = now + RETRY_REPLAY
            else:
                self.models.clear()  # everything of ours is delivered (or was evicted)
            return None
        batch = Batch.replayed(record.method, record.model_id, record.ids, record.ends, record.data)
        mark = self.in_flight = ReplayMark(record)
        batch.origin = mark
        return batch

    def split(self, mark: ReplayMark, parts: int) -> None:
        mark.parts += parts - 1

    def resolved(self, batch: Batch, delivered: bool, transient: bool = False) -> None:
        """A part of a replayed record is done: delivered, failed for good, or still failing
        (``transient``: keep the record on disk and pause)."""
        mark = batch.origin
        assert isinstance(mark, ReplayMark)
        if delivered:
            self.stats.replayed += len(batch)
        if transient:
            mark.broken = True
        mark.parts -= 1
        if mark.parts > 0:
            return
        self.in_flight = None
        if mark.broken:
            self.stop_replay()
            return
        try:
            self.spool.ack(mark.record)
        except OSError as error:
            self.stats.last_error = f"spool: {error}"
