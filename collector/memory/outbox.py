"""Memory mode's outbox: pending webhooks, retries and dead letters in this process.

Every change is kept in the data directory (`collector.memory.disk`): a put is written before
the ingest request that made it is answered, a settled delivery's row goes with the next commit,
so a killed process resends at most the deliveries of its last moments.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence

import msgspec

from collector.delivery.outbox import DeadLetter, Envelope, OutboxClosed
from collector.memory.disk import Disk
from collector.webhook import WebhookRequest

logger = logging.getLogger("tripwire.delivery")

_ENCODER = msgspec.msgpack.Encoder()
_ENVELOPE = msgspec.msgpack.Decoder(Envelope)
_DEAD_LETTER = msgspec.msgpack.Decoder(DeadLetter)
_COUNT = msgspec.msgpack.Decoder(int)
EARLIER_OUTBOX = "outbox.msgpack"  # what versions before the log saved at a clean stop


class _EarlierOutbox(msgspec.Struct, kw_only=True):
    """`outbox.msgpack`, as versions before the log saved it at a clean stop."""

    version: int = 1
    pending: list[Envelope] = []
    dead: list[DeadLetter] = []
    usage: dict[str, int] = {}


class MemoryOutbox:
    """In-process outbox: a heap keyed by due time, a claimed set, bounded dead letters."""

    def __init__(
        self,
        disk: Disk | None = None,
        *,
        dead_capacity: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._disk = disk
        self._clock = clock
        self._dead_capacity = dead_capacity
        self._heap: list[tuple[float, int, Envelope]] = []
        self._seq = itertools.count()
        self._live: dict[str, Envelope] = {}  # pending or claimed, by delivery id
        self._claimed: dict[str, Envelope] = {}
        self._dead: OrderedDict[str, DeadLetter] = OrderedDict()
        self._usage: dict[str, int] = {}
        self._wakeup = asyncio.Event()
        self._closed = False
        self._mark_live: Callable[[str], None] = _ignore
        self._mark_dead: Callable[[str], None] = _ignore
        self._mark_usage: Callable[[str], None] = _ignore
        if disk is not None:
            self._pending_rows = disk.table("outbox", self._envelope_record)
            self._dead_rows = disk.table("dead_letters", self._dead_record)
            self._usage_rows = disk.table("usage", self._usage_record)
            self._mark_live = self._pending_rows.mark
            self._mark_dead = self._dead_rows.mark
            self._mark_usage = self._usage_rows.mark

    async def open(self) -> None:
        """Load the deliveries the data directory holds (claimed ones are pending again)."""
        self._closed = False
        if self._disk is None or self._live:
            return
        for _, value in self._pending_rows.rows():
            self._push(_ENVELOPE.decode(value), mark=False)
        letters = [_DEAD_LETTER.decode(value) for _, value in self._dead_rows.rows()]
        letters.sort(key=lambda letter: letter.dead_at)
        for letter in letters:
            self._bury(letter)
        for period, value in self._usage_rows.rows():
            self._usage[period] = _COUNT.decode(value)
        if not (self._live or self._dead or self._usage):
            await self._import_earlier(self._disk)

    async def _import_earlier(self, disk: Disk) -> None:
        """The deliveries an earlier version saved in `outbox.msgpack`, written to the log
        (once: the file is renamed `outbox.msgpack.imported` when they are)."""
        earlier = disk.earlier(EARLIER_OUTBOX, _EarlierOutbox)
        if earlier is None:
            return
        for envelope in earlier.pending:
            self._push(envelope)
        for letter in sorted(earlier.dead, key=lambda letter: letter.dead_at):
            self._bury(letter)
        for period, count in earlier.usage.items():
            self._usage[period] = count
            self._mark_usage(period)
        await disk.commit()
        disk.imported(EARLIER_OUTBOX)
        logger.warning(
            "imported %d pending webhooks and %d dead letters saved by an earlier version "
            "(%s is now %s.imported)",
            len(earlier.pending),
            len(earlier.dead),
            EARLIER_OUTBOX,
            EARLIER_OUTBOX,
        )

    async def close(self) -> None:
        """Refuse further puts; claimed but unsettled deliveries are pending again."""
        self._closed = True
        for envelope in list(self._claimed.values()):
            self._release(envelope)
            self._push(envelope)

    def _envelope_record(self, delivery_id: str) -> bytes | None:
        envelope = self._live.get(delivery_id)
        return None if envelope is None else _ENCODER.encode(envelope)

    def _dead_record(self, delivery_id: str) -> bytes | None:
        letter = self._dead.get(delivery_id)
        return None if letter is None else _ENCODER.encode(letter)

    def _usage_record(self, period: str) -> bytes | None:
        count = self._usage.get(period)
        return None if count is None else _ENCODER.encode(count)

    async def put(self, requests: Iterable[WebhookRequest]) -> None:
        """Enqueue new webhooks, due now; a webhook_id already pending is ignored."""
        if self._closed:
            raise OutboxClosed("the outbox is closed")
        now = self._clock()
        for request in requests:
            if request.webhook_id not in self._live:
                self._push(Envelope(request=request, enqueued_at=now, due_at=now))

    async def claim(self, limit: int, wait: float) -> list[Envelope]:
        """Take up to `limit` due envelopes, waiting up to `wait` seconds for one."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + wait
        while True:
            now = self._clock()
            heap = self._heap
            if heap and heap[0][0] <= now:
                batch: list[Envelope] = []
                while heap and heap[0][0] <= now and len(batch) < limit:
                    envelope = heapq.heappop(heap)[2]
                    self._claimed[envelope.delivery_id] = envelope
                    batch.append(envelope)
                return batch
            timeout = give_up - loop.time()
            if heap:
                timeout = min(timeout, heap[0][0] - now)
            if timeout <= 0 or limit <= 0:
                return []
            self._wakeup.clear()
            try:
                async with asyncio.timeout(timeout):
                    await self._wakeup.wait()
            except TimeoutError:
                pass

    async def ack(self, envelope: Envelope) -> None:
        """Forget a claimed envelope."""
        self._release(envelope)

    async def retry_at(self, envelope: Envelope, due: float) -> None:
        """Put a claimed envelope back, due at `due`."""
        self._release(envelope)
        envelope.due_at = due
        self._push(envelope)

    async def dead_letter(self, envelope: Envelope, status: str, error: str | None) -> None:
        """Move a claimed envelope to the dead letters."""
        self._release(envelope)
        self._bury(
            DeadLetter(
                request=envelope.request,
                status=status,
                error=error,
                attempts=envelope.attempts,
                dead_at=self._clock(),
            )
        )

    async def dead_letters(
        self,
        *,
        campaign: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int | None = None,
    ) -> list[DeadLetter]:
        """List dead letters, oldest first, by campaign and time of death."""
        found: list[DeadLetter] = []
        for letter in self._dead.values():
            if campaign is not None and letter.request.campaign_id != campaign:
                continue
            if since is not None and letter.dead_at < since:
                continue
            if until is not None and letter.dead_at > until:
                continue
            found.append(letter)
            if limit is not None and len(found) >= limit:
                break
        return found

    async def revive(
        self, delivery_ids: Sequence[str], replacements: Mapping[str, WebhookRequest] | None = None
    ) -> list[str]:
        """Move dead letters back to pending, as new deliveries due now."""
        now = self._clock()
        revived: list[str] = []
        for delivery_id in delivery_ids:
            if delivery_id in self._live:
                continue
            letter = self._dead.pop(delivery_id, None)
            if letter is None:
                continue
            self._mark_dead(delivery_id)
            request = (replacements or {}).get(delivery_id, letter.request)
            self._push(Envelope(request=request, enqueued_at=now, due_at=now, counted=True))
            revived.append(delivery_id)
        return revived

    async def add_usage(self, period: str, amount: int) -> int:
        """Add to a period's delivery count and return the new total."""
        total = self._usage.get(period, 0) + amount
        for old in self._usage.keys() - {period}:  # older periods are of no further use
            self._mark_usage(old)
        self._usage = {period: total}
        self._mark_usage(period)
        return total

    def depth(self) -> int:
        """Envelopes pending or claimed and not yet settled."""
        return len(self._live)

    def _push(self, envelope: Envelope, *, mark: bool = True) -> None:
        self._live[envelope.delivery_id] = envelope
        if mark:
            self._mark_live(envelope.delivery_id)
        heapq.heappush(self._heap, (envelope.due_at, next(self._seq), envelope))
        self._wakeup.set()

    def _release(self, envelope: Envelope) -> None:
        self._claimed.pop(envelope.delivery_id, None)
        if self._live.pop(envelope.delivery_id, None) is not None:
            self._mark_live(envelope.delivery_id)

    def _bury(self, letter: DeadLetter) -> None:
        self._dead.pop(letter.delivery_id, None)
        self._dead[letter.delivery_id] = letter
        self._mark_dead(letter.delivery_id)
        while len(self._dead) > self._dead_capacity:
            self._mark_dead(self._dead.popitem(last=False)[0])


def _ignore(_: str) -> None:
    """Where changes go when nothing is kept."""
