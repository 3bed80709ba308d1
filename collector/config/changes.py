"""Campaign changes made while running (admin API, dashboard), as they are kept between runs.

The config file seeds the campaigns; a change made while running is kept (in the data directory
in memory mode, in Redis in Redis mode) and applied over the file at every start, so the latest
edit wins until the campaign is edited again.
"""

from __future__ import annotations

import msgspec

from collector.config.schema import CampaignSpec, decode_hook, encode_hook


class CampaignChange(msgspec.Struct, kw_only=True):
    """One campaign's latest change: its spec, or None when it was deleted."""

    spec: CampaignSpec | None
    updated_at: float


encode_change = msgspec.json.Encoder(enc_hook=encode_hook).encode
decode_change = msgspec.json.Decoder(CampaignChange, dec_hook=decode_hook).decode
