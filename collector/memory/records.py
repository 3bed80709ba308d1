"""How memory mode packs what it keeps: events as compact bytes, profiles and tallies as the
data directory's records, and what versions before the log left in `state.msgpack`.

An event is packed as a msgpack array of its fields, without their names (`recent` compresses
what it keeps of them); one holding an integer msgpack cannot carry (past 64 bits) as JSON.
"""

from __future__ import annotations

from typing import Any

import msgspec

from collector.engine.profile import Tally, UserState
from collector.engine.results import Counts
from collector.events import Event

_EVENT_FIELDS = msgspec.structs.fields(Event)
pack_plain = msgspec.msgpack.Encoder().encode
_unpack = msgspec.msgpack.Decoder(list[Any]).decode
_encode_state_into = msgspec.msgpack.Encoder().encode_into
_state_buffer = bytearray()  # reused: only the finished bytes are kept
load_state = msgspec.msgpack.Decoder(UserState).decode  # only the array form, as held


def save_state(state: UserState) -> bytes:
    """A profile as memory mode holds it (see `profile.encode_state`), in a bytes object of its
    own size: `encode` hands back one sized to its 512-byte starting buffer, so a profile of
    350 bytes held that way took 545 (OverflowError past 64-bit integers)."""
    _encode_state_into(state, _state_buffer)
    return bytes(_state_buffer)


def pack_bytes(event: Event) -> bytes:
    """An event as compact bytes: a msgpack array of its fields, without their names
    (OverflowError for an integer past 64 bits)."""
    return pack_plain(msgspec.structs.astuple(event))


def unpack(packed: bytes) -> Event:
    """The event `pack_bytes` packed."""
    values = _unpack(packed)
    return Event(**{field.name: value for field, value in zip(_EVENT_FIELDS, values, strict=True)})


class EarlierState(msgspec.Struct):
    """`state.msgpack`, as versions before the log saved it at a clean stop."""

    users: dict[str, msgspec.Raw]  # map-form profiles (see `decode_state`)
    index: dict[str, str]
    seen: list[tuple[str, float]] = []  # messageIds: dedupe is per sender now, so not imported
    recent: dict[str, list[msgspec.Raw]] = {}  # packed events (see `pack_bytes`)


class Profile(msgspec.Struct, array_like=True):
    """One profile as the data directory keeps it (its recent events are kept apart); written
    as the tuple `_profile_record` gives, JSON past 64-bit integers. The state is read with
    `decode_state` (or `decode_json_state`), which also reads the map form earlier versions
    wrote."""

    state: msgspec.Raw
    ids: tuple[str, ...]


decode_profile = msgspec.msgpack.Decoder(Profile).decode
# A profile or event holding an integer msgpack cannot carry (past 64 bits) is kept as JSON.
encode_json = msgspec.json.Encoder().encode
decode_json_profile = msgspec.json.Decoder(Profile).decode
decode_json_event = msgspec.json.Decoder(Event).decode
decode_dedupe_keys = msgspec.msgpack.Decoder(list[int | bytes]).decode  # bytes: earlier
encode_tally = msgspec.msgpack.Encoder().encode
decode_tally = msgspec.msgpack.Decoder(Tally).decode
decode_results = msgspec.msgpack.Decoder(dict[str, Counts]).decode
decode_hours = msgspec.msgpack.Decoder(dict[int, tuple[int, int]]).decode

