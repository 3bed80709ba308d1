"""Campaign changes made through the admin API, applied in every process that shares a store.

Memory mode has one process, so the runtime applies a change directly. In Redis mode a change
is written to the hash `tw:{campaigns}` (campaign id -> its spec and update time, or a deletion
marker) and bumps the counter `tw:{campaigns}:v` in the same step; every process polls the
counter every `interval` seconds (250 ms by default) and, when it moved, re-reads the hash and
applies what changed since it last looked. The writer applies its change before answering.

A conditional write (an edit with `If-Match`) is checked where it happens: one script stores
the change only if the campaign's stored entry is still the one this process last applied (or
there is none, for a campaign only the config file holds), so of two editors who read the same
version on two processes, the second to write gets `PreconditionFailed` (412), never a silent
overwrite.

The config file is applied at start; changes stored in Redis are applied over it, so a
campaign edited or deleted through the admin API stays so in processes started later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Final

import msgspec

from collector.config.changes import CampaignChange, decode_change
from collector.config.schema import CampaignSpec, decode_hook, encode_hook
from collector.errors import PreconditionFailed, Unavailable
from collector.redis.connection import RedisConnection
from collector.redis.keys import Keys

log = logging.getLogger("tripwire.campaigns")

ApplyPut = Callable[[CampaignSpec, float], object]
ApplyRemove = Callable[[str], object]


class StoredChange(msgspec.Struct, kw_only=True):
    """One campaign's latest change: its spec, or None when it was deleted."""

    spec: CampaignSpec | None
    updated_at: float


# KEYS: the campaigns hash, its version counter. ARGV: campaign id, change, 1 when the write is
# conditional, 1 when an entry is expected, the expected entry. Returns 1, or 0 (changed since).
_WRITE_IF_UNCHANGED: Final = """
if ARGV[3] == '1' then
  local current = redis.call('HGET', KEYS[1], ARGV[1])
  if ARGV[4] == '1' then
    if current ~= ARGV[5] then return 0 end
  elseif current then
    return 0
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('INCR', KEYS[2])
return 1
"""

_ENCODER = msgspec.json.Encoder(enc_hook=encode_hook)
_DECODER = msgspec.json.Decoder(StoredChange, dec_hook=decode_hook)


class RedisCampaignSync:
    """Writes campaign changes to Redis and applies everyone's changes in this process."""

    def __init__(
        self,
        connection: RedisConnection,
        apply_put: ApplyPut,
        apply_remove: ApplyRemove,
        *,
        interval: float = 0.25,
    ) -> None:
        self._connection = connection
        self._apply_put = apply_put
        self._apply_remove = apply_remove
        self._interval = interval
        self._version: bytes | None = None
        self._applied: dict[str, float] = {}  # campaign id -> updated_at applied here
        self._entries: dict[str, bytes] = {}  # campaign id -> the stored entry applied here
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Apply the stored changes now (if Redis answers) and keep polling for more."""
        with contextlib.suppress(Unavailable):
            await self.refresh()
        self._task = asyncio.create_task(self._poll(), name="tripwire-campaign-sync")

    async def stop(self) -> None:
        """Stop polling."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def put(self, spec: CampaignSpec, *, if_unchanged: bool = False) -> None:
        """Store a new or changed campaign for every process, and apply it here.

        `if_unchanged`: only if nobody stored a change of it since this process applied its
        last one (PreconditionFailed otherwise)."""
        change = StoredChange(spec=spec, updated_at=time.time())
        await self._write(spec.id, change, if_unchanged)

    async def remove(self, campaign_id: str, *, if_unchanged: bool = False) -> None:
        """Store a campaign's deletion for every process, and apply it here."""
        change = StoredChange(spec=None, updated_at=time.time())
        await self._write(campaign_id, change, if_unchanged)

    async def _write(self, campaign_id: str, change: StoredChange, if_unchanged: bool) -> None:
        expected = self._entries.get(campaign_id)
        stored = await self._connection.call(
            "EVAL",
            _WRITE_IF_UNCHANGED,
            2,
            Keys.campaigns(),
            Keys.campaigns_version(),
            campaign_id,
            _ENCODER.encode(change),
            "1" if if_unchanged else "0",
            "0" if expected is None else "1",
            expected or b"",
            what="storing a campaign",
        )
        await self.refresh()
        if not stored:
            raise PreconditionFailed(
                f"If-Match: campaign {campaign_id!r} was changed by another process meanwhile; "
                "read it again"
            )

    async def refresh(self) -> None:
        """Apply every stored change this process has not applied yet."""
        async with self._lock:
            version = await self._connection.call(
                "GET", Keys.campaigns_version(), what="reading campaigns"
            )
            if version is None or version == self._version:
                return
            stored = await self._connection.call(
                "HGETALL", Keys.campaigns(), what="reading campaigns"
            )
            for raw_id, blob in sorted(stored.items()):
                self._apply(raw_id.decode(), blob)
            self._version = version

    def _apply(self, campaign_id: str, blob: bytes) -> None:
        try:
            change = _DECODER.decode(blob)
        except msgspec.DecodeError as exc:
            log.error("stored campaign %s is unreadable: %s", campaign_id, exc)
            return
        self._entries[campaign_id] = blob
        if self._applied.get(campaign_id) == change.updated_at:
            return
        self._applied[campaign_id] = change.updated_at
        try:
            if change.spec is None:
                self._apply_remove(campaign_id)
            else:
                self._apply_put(change.spec, change.updated_at)
        except Exception:  # a change another version wrote; this process keeps running
            log.exception("cannot apply stored campaign %s", campaign_id)

    async def _poll(self) -> None:
        while self._task is not None:
            await asyncio.sleep(self._interval)
            try:
                await self.refresh()
            except Unavailable:
                await asyncio.sleep(1.0)


async def read_changes(connection: RedisConnection) -> dict[str, CampaignChange]:
    """The campaign changes stored in Redis, by campaign id (for export)."""
    stored = await connection.call("HGETALL", Keys.campaigns(), what="reading campaigns")
    return {raw_id.decode(): decode_change(blob) for raw_id, blob in stored.items()}
