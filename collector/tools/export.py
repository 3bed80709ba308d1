"""`tripwire export`: the config file with the changes made while running, as YAML.

The config file seeds the campaigns; changes made through the admin API or the dashboard are
kept (data directory or Redis) and win over the file at every start. Export writes the live set
back as a config file, so that it can be reviewed and kept in version control: the file's other
sections as they are, its campaigns replaced, removed or added as they were changed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TextIO

import yaml

from collector.backend import kept_changes
from collector.config.schema import campaign_as_written
from collector.config.settings import Settings
from collector.definitions import apply_to_raw
from collector.errors import ConfigError

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
    changes, definitions = kept_changes(settings)
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
    apply_to_raw(raw, definitions)  # variables and segments changed so
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
