"""The config as it runs: the file's, with the campaign changes made while running.

    live = LiveConfig(settings.config)
    live.engine.process(...)           # always the engine of the current campaigns
    live.put(spec, updated_at)         # a campaign added or replaced (admin API, dashboard)
    live.remove(campaign_id)           # a campaign deleted

A backend keeps the changes (`changes`) so that every start applies them over the file again;
in Redis mode every process applies every change it hears of.
"""

from __future__ import annotations

import time

import msgspec

from collector.config.changes import CampaignChange
from collector.config.schema import CampaignSpec, ConfigFile
from collector.engine.engine import Engine, compile_rules


class LiveConfig:
    """The live config and its engine, changed in place as campaigns are edited."""

    def __init__(self, config: ConfigFile) -> None:
        self.config = config
        self.engine = Engine(compile_rules(config, updated_at={}))
        self.changes: dict[str, CampaignChange] = {}  # made while running, by campaign id

    def has(self, campaign_id: str) -> bool:
        """True when a campaign of that id runs."""
        return any(c.id == campaign_id for c in self.config.campaigns)

    def put(self, spec: CampaignSpec, updated_at: float) -> None:
        """Add or replace a campaign."""
        self.engine.replace_campaign(spec, updated_at)  # a ConfigError leaves everything as it was
        campaigns = list(self.config.campaigns)
        index = next((i for i, c in enumerate(campaigns) if c.id == spec.id), None)
        if index is None:
            campaigns.append(spec)
        else:
            campaigns[index] = spec
        self.config = msgspec.structs.replace(self.config, campaigns=campaigns)
        self.changes[spec.id] = CampaignChange(spec=spec, updated_at=updated_at)

    def remove(self, campaign_id: str) -> None:
        """Delete a campaign."""
        self.config = msgspec.structs.replace(
            self.config, campaigns=[c for c in self.config.campaigns if c.id != campaign_id]
        )
        self.engine.remove_campaign(campaign_id)
        self.changes[campaign_id] = CampaignChange(spec=None, updated_at=time.time())
