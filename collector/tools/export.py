"""`tripwire export`: the config file with the changes made while running, as YAML.

The config file seeds the campaigns; changes made through the admin API or the dashboard are
kept (data directory or Redis) and win over the file at every start. Export writes the live set
back as a config file, so that it can be reviewed and kept in version control: the file's other
sections as they are, its campaigns replaced, removed or added as they were changed.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, TextIO

import yaml

from collector.config.changes import CampaignChange, decode_change
from collector.config.schema import campaign_as_written
from collector.config.settings import Settings
from collector.definitions import DefinitionChange, apply_to_raw, in_order
from collector.errors import ConfigError
from collector.memory.disk import read_table

HEADER = (
    "# Written by `tripwire export`: the config file with the campaign, variable and segment\n"
    "# changes made while running (admin API, dashboard). Replace the config file with it to\n"
    "# keep them.\n"
)


def run_export(settings: Settings, out: TextIO) -> int:
    """Print (or write) the config file with the live campaign changes applied."""
    if settings.config_path is None:
        raise ConfigError(["--config: export needs the config file the changes apply to"])
    raw = _raw_config(Path(settings.config_path))
    changes = _changes(settings)
    campaigns: list[Any] = list(raw.get("campaigns") or [])
    for campaign_id, change in sorted(changes.items(), key=lambda item: item[1].updated_at):
        ids = [c.get("id") if isinstance(c, dict) else None for c in campaigns]
        at = ids.index(campaign_id) if campaign_id in ids else None
        if change.spec is None:
            if at is not None:
                del campaigns[at]
            continue
        data = campaign_as_written(change.spec)
        if at is None:
            campaigns.append(data)
        else:
            campaigns[at] = data
    raw["campaigns"] = campaigns
    apply_to_raw(raw, _definition_changes(settings))  # variables and segments changed so
    out.write(HEADER)
    out.write(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True, width=96))
    return 0


def _raw_config(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
        raw = yaml.safe_load(text)  # JSON is YAML
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError([f"{path}: cannot read: {exc}"]) from exc
    if not isinstance(raw, dict):
        raise ConfigError([f"{path}: expected a mapping at the top"])
    return raw


def _changes(settings: Settings) -> dict[str, CampaignChange]:
    """The kept campaign changes, by campaign id."""
    if settings.store == "memory":
        if settings.data_dir is None:
            return {}
        rows = read_table(settings.data_dir, "campaigns")
        return {campaign_id: decode_change(value) for campaign_id, value in rows.items()}
    from collector.redis.campaignsync import read_changes

    return asyncio.run(read_changes(settings.store))


def _definition_changes(settings: Settings) -> list[DefinitionChange]:
    """The kept variable and segment changes, oldest first."""
    if settings.store == "memory":
        if settings.data_dir is None:
            return []
        return in_order(list(read_table(settings.data_dir, "definitions").values()))
    return asyncio.run(_redis_definition_changes(settings.store))


async def _redis_definition_changes(url: str) -> list[DefinitionChange]:
    from collector.redis.connection import RedisConnection
    from collector.redis.definitionsync import read_changes

    connection = RedisConnection(url)
    try:
        return await read_changes(connection)
    finally:
        await connection.close()

