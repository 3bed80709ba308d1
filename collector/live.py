"""The config as it runs: the file's, with the campaign changes made while running.

    live = LiveConfig(settings.config)
    live.engine.process(...)           # always the engine of the current campaigns
    live.put(spec, updated_at)         # a campaign added or replaced (admin API, dashboard)
    live.remove(campaign_id)           # a campaign deleted
    live.apply_definition(change)      # a variable or segment set or deleted

A backend keeps the changes (`changes`, `definitions`) so that every start applies them over the
file again (variables and segments first: campaigns may use them); in Redis mode every process
applies every change it hears of.
"""

from __future__ import annotations

import logging
import time

import msgspec

from collector.config.changes import CampaignChange
from collector.config.schema import CampaignSpec, ConfigFile
from collector.definitions import DefinitionChange, row_key, with_change
from collector.engine.engine import Engine, compile_rules

log = logging.getLogger("tripwire.definitions")


class LiveConfig:
    """The live config and its engine, changed in place as campaigns are edited."""

    def __init__(self, config: ConfigFile) -> None:
        self.config = config
        self.engine = Engine(compile_rules(config, updated_at={}))
        self.changes: dict[str, CampaignChange] = {}  # made while running, by campaign id
        self.definitions: dict[str, DefinitionChange] = {}  # by `row_key`

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

    def apply_definition(self, change: DefinitionChange) -> None:
        """Set or delete a variable or segment: the config is checked and compiled again with it
        (raises ConfigError with every problem, leaving everything as it was)."""
        config = with_change(self.config, change.kind, change.name, change.raw)
        times = {cid: c.updated_at for cid, c in self.changes.items()}
        self.engine.rules = compile_rules(config, updated_at=times)
        self.config = config
        self.definitions[row_key(change.kind, change.name)] = change

    def apply_kept_definitions(self, changes: list[DefinitionChange]) -> None:
        """Apply kept changes, oldest first, skipping those applied already; one that no longer
        applies (written by another version, or invalid now) is logged and the file's stays."""
        for change in changes:
            known = self.definitions.get(row_key(change.kind, change.name))
            if known is not None and known.updated_at == change.updated_at:
                continue
            try:
                self.apply_definition(change)
            except Exception:
                log.exception("cannot apply the kept change of %s %s", change.kind, change.name)

