"""Each profile's recent events, as memory mode holds them: one bytes object per profile.

What the admin shows of a user's recent events (`state.recent_events` of them) is read only when
someone looks the user up, replays a delivery or dry-runs a campaign, yet it was most of what a
visitor cost: a few hundred bytes per message even packed. So each event is packed (msgpack,
see `records.pack_bytes`) and compressed with Zstandard against a dictionary trained on the
events this data directory has seen: a site's events repeat their field layout, URLs, user
agents and names, which a dictionary of a few KB captures (the demo shop's page views go from
about 460 bytes to 72; page views with varied user agents, paths, referrers and campaign
parameters from 495 to about 120). All of a profile's events sit in one bytes object (a count,
then each item after its length), so a profile costs one object, not one per event.

The dictionary is trained once, in a worker thread, from the first TRAIN_EVENTS events packed
(until then events are kept packed and uncompressed, and are compressed once it exists), and is
kept in the data directory with the events, so a restart decodes them; a data directory holding
only uncompressed events (written before this) trains it from them at start. Each item on disk
is the same bytes as in memory (compressed: a leading COMPRESSED byte, then a Zstandard frame
without its magic number; packed: a msgpack array; JSON for an event holding an integer msgpack
cannot carry, as before).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Iterator

import msgspec
import zstandard

from collector.events import Event
from collector.memory.records import decode_json_event, encode_json, pack_bytes, unpack
from collector.store.base import bounded_recent

log = logging.getLogger("tripwire.store")

COMPRESSED = 0x01  # an item's first byte when it is compressed (packed starts 0x9b, JSON "{")
DICTIONARY_BYTES = 8 * 1024
TRAIN_EVENTS = 1_000  # packed events a dictionary is trained from
_LEVEL = 1  # small events compress as well at level 1 as at 3, and faster
_COUNT = 2  # bytes of the item count that starts a profile's list


class Codec:
    """Packs events into items and back, compressed once a dictionary is set."""

    def __init__(self) -> None:
        self.dictionary: bytes | None = None
        self._compress: Callable[[bytes], bytes] | None = None
        self._decompress: Callable[[bytes], bytes] | None = None

    def set_dictionary(self, data: bytes) -> None:
        """Compress from now on with this dictionary (and read what it compressed)."""
        params = zstandard.ZstdCompressionParameters.from_level(
            _LEVEL,
            source_size=512,
            dict_size=len(data),
            format=zstandard.FORMAT_ZSTD1_MAGICLESS,
            write_checksum=0,
            write_content_size=1,
            write_dict_id=0,
        )
        dictionary = zstandard.ZstdCompressionDict(data)
        dictionary.precompute_compress(compression_params=params)
        self.dictionary = data
        self._compress = zstandard.ZstdCompressor(
            dict_data=dictionary, compression_params=params
        ).compress
        self._decompress = zstandard.ZstdDecompressor(
            dict_data=dictionary, format=zstandard.FORMAT_ZSTD1_MAGICLESS
        ).decompress

    def item(self, event: Event, limit: int) -> bytes:
        """An event as an item, slimmed to `limit` bytes packed (see `bounded_recent`)."""
        try:
            packed = bounded_recent(event, limit, pack_bytes)
        except OverflowError:  # an integer past 64 bits: JSON, as the data directory kept it
            return bounded_recent(event, limit, encode_json)
        return self.compressed(packed)

    def compressed(self, item: bytes) -> bytes:
        """A packed item compressed, when there is a dictionary (others as they are)."""
        if self._compress is None or item[0] != _PACKED:
            return item
        return _TAG + self._compress(item)

    def event(self, item: bytes) -> Event:
        """The event an item holds."""
        first = item[0]
        if first == COMPRESSED:
            if self._decompress is None:
                raise ValueError("a compressed recent event, and no dictionary to read it")
            return unpack(self._decompress(item[1:]))
        if first == _JSON:
            return decode_json_event(item)
        return unpack(item)


_TAG = bytes([COMPRESSED])
_PACKED = 0x9B  # a msgpack array of an Event's 11 fields
_JSON = ord("{")


class RecentEvents:
    """Each profile's newest events, oldest first, as one bytes object per profile."""

    def __init__(self, size: Callable[[], int], limit: Callable[[], int]) -> None:
        self._size = size  # how many a profile keeps (read each time: the config may change)
        self._limit = limit  # bytes an event may take packed
        self.codec = Codec()
        self._lists: dict[str, bytes] = {}
        self._plain: set[str] = set()  # profiles holding items not compressed yet
        self._samples: list[bytes] | None = []  # packed events to train the dictionary from
        self._training: asyncio.Future[bytes | None] | None = None
        self.trained: Callable[[bytes], None] = _ignore  # told the dictionary once it exists

    def __contains__(self, key: str) -> bool:
        return key in self._lists

    def blob(self, key: str) -> bytes | None:
        """What a profile's events take (for measuring), None when it has none."""
        return self._lists.get(key)

    def items(self, key: str) -> list[bytes]:
        """A profile's items, oldest first (as the data directory keeps them)."""
        blob = self._lists.get(key)
        return [] if blob is None else list(_items(blob))

    def events(self, key: str) -> list[Event]:
        """A profile's events, oldest first."""
        read = self.codec.event
        return [read(item) for item in self.items(key)]

    def add(self, key: str, event: Event) -> bytes:
        """Keep an event as a profile's newest (its oldest goes past the size); the item."""
        item = self.codec.item(event, self._limit())
        if item[0] == _PACKED:
            self._plain.add(key)
            self._sample(item)
        blob = self._lists.get(key)
        if blob is None:
            self._lists[key] = _join([item])
            return item
        count = int.from_bytes(blob[:_COUNT], "little")
        size = self._size()
        start = _COUNT
        while count >= size and count:  # the oldest go
            length, start = _length(blob, start)
            start += length
            count -= 1
        self._lists[key] = b"".join(
            ((count + 1).to_bytes(_COUNT, "little"), blob[start:], _prefix(item), item)
        )
        return item

    def put(self, key: str, items: list[bytes]) -> None:
        """A profile's items, oldest first (the newest `size` are kept); none: forget it."""
        items = items[len(items) - self._size() :] if len(items) > self._size() else items
        if not items:
            self.pop(key)
            return
        self._lists[key] = _join(items)
        if any(item[0] == _PACKED for item in items):
            self._plain.add(key)
        else:
            self._plain.discard(key)

    def pop(self, key: str) -> bool:
        """Forget a profile's events; True when it had some."""
        self._plain.discard(key)
        return self._lists.pop(key, None) is not None

    def merge(self, key: str, other: str) -> list[bytes]:
        """Move `other`'s events into `key`'s, in time order; `key`'s items now."""
        read = self.codec.event
        mine, theirs = self.items(key), self.items(other)
        self.pop(other)
        if not theirs:
            return mine
        pairs = [(read(item), item) for item in (*theirs, *mine)]
        pairs.sort(key=lambda pair: pair[0].timestamp)
        items = [item for _, item in pairs][-self._size() :] if self._size() else []
        self.put(key, items)
        return items

    def load(self, stored: Iterable[tuple[str, list[bytes]]]) -> None:
        """What the data directory kept (after its dictionary, `codec.set_dictionary`); events
        it cannot read are dropped, with an error in the log."""
        lost = 0
        read = self.codec.event
        for key, items in stored:
            readable: list[bytes] = []
            for item in items:
                try:
                    read(item)
                except (ValueError, zstandard.ZstdError, msgspec.DecodeError):
                    lost += 1
                    continue
                readable.append(item)
            self.put(key, readable)
        if lost:
            log.error("dropped %d recent events that could not be read", lost)

    def compress_held(self) -> set[str]:
        """Compress the uncompressed events held (at start: those written before there was a
        dictionary), training one from them if there is none; the profiles compressed."""
        if self.codec.dictionary is None and self._plain:
            held = [item for key in self._plain for item in self.items(key)]
            samples = [item for item in held if item[0] == _PACKED]
            data = _train(samples)
            if data is not None:
                self._use(data, len(samples))
        if self.codec.dictionary is None:
            return set()
        plain, self._plain = self._plain, set()
        for key in plain:
            items = self.items(key)
            if items:
                self.put(key, [self.codec.compressed(item) for item in items])
        return plain

    def _use(self, data: bytes, samples: int) -> None:
        """Compress from now on with a dictionary just trained from `samples` events."""
        self.trained(data)  # kept before any item it compresses
        self.codec.set_dictionary(data)
        self._samples = None
        log.info(
            "recent events are compressed from now on (a %d-byte dictionary trained from %d "
            "events)", len(data), samples,
        )

    def _sample(self, item: bytes) -> None:
        samples = self._samples
        if samples is None:
            return
        samples.append(item)
        if len(samples) < TRAIN_EVENTS or self._training is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a tool): train here
            self._trained(_train(samples), samples)
            return
        self._samples = None
        self._training = loop.run_in_executor(None, _train, samples)
        self._training.add_done_callback(lambda done: self._trained(done.result(), samples))

    def _trained(self, data: bytes | None, samples: list[bytes]) -> None:
        """A dictionary was trained (None: it could not be, from these)."""
        self._training = None
        if self.codec.dictionary is not None:
            return
        if data is None:  # too few or too alike to train from: take more, up to a point
            self._samples = samples if len(samples) < 16 * TRAIN_EVENTS else None
            return
        self._use(data, len(samples))
        self.compress_held()  # the few events kept while there was none


def _train(samples: list[bytes]) -> bytes | None:
    """A dictionary trained from packed events, None when they are too few or too alike."""
    buffers: list[bytes | bytearray | memoryview] = [*samples]
    try:
        return zstandard.train_dictionary(DICTIONARY_BYTES, buffers, level=_LEVEL).as_bytes()
    except zstandard.ZstdError as exc:
        log.info("recent events stay uncompressed for now: %s", exc)
        return None


def _prefix(item: bytes) -> bytes:
    """An item's length, as a varint (one byte under 128)."""
    length = len(item)
    if length < 0x80:
        return bytes((length,))
    out = bytearray()
    while length >= 0x80:
        out.append(length & 0x7F | 0x80)
        length >>= 7
    out.append(length)
    return bytes(out)


def _length(blob: bytes, at: int) -> tuple[int, int]:
    """The varint at `at`, and where what it measures starts."""
    length = shift = 0
    while True:
        byte = blob[at]
        at += 1
        length |= (byte & 0x7F) << shift
        if byte < 0x80:
            return length, at
        shift += 7


def _join(items: list[bytes]) -> bytes:
    parts = [len(items).to_bytes(_COUNT, "little")]
    for item in items:
        parts += (_prefix(item), item)
    return b"".join(parts)


def _items(blob: bytes) -> Iterator[bytes]:
    at = _COUNT
    for _ in range(int.from_bytes(blob[:_COUNT], "little")):
        length, at = _length(blob, at)
        yield blob[at : at + length]
        at += length


def _ignore(_: bytes) -> None:
    """Where a trained dictionary goes when nothing is kept."""
