"""Compiling a config into `Rules`: variables, segments, test users and indexed campaigns.

Only variables that some condition or template uses are maintained: resolving a name while
compiling marks the variable used, and the `where` of a used variable may in turn use more.
`event_count: NAME, window: W` becomes an implicit count variable. Campaigns are indexed by
trigger event name (no trigger = `page`) and by `segment_entered` segment, each list sorted by
exclusivity rank, so an event only pays for the campaigns that could fire on it. Within an event
name, the campaigns whose trigger requires one text of one event field (`Campaign.key`; the
field most of them name, when they name several) are also looked up by the event's value
(`Lookup`): the others are missed all at once, as one shared `Missed`. Absence
triggers are indexed by their `after` event (arming) and `unless` event (cancelling) instead.

Changing one campaign (`Rules.with_campaign`, `Rules.without_campaign`) compiles the config
again with the changed campaign list, into a new registry: a Rules never shares its registry, so
a refused campaign leaves nothing behind and a removed campaign takes the variables only it used
with it. (Compiling is cheap: a thousand campaigns take well under a second.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from collector.config.schema import CampaignSpec, ConditionTree, ConfigFile
from collector.engine.campaigns import (
    Campaign,
    Gate,
    Missed,
    Run,
    build_arms,
    runs,
    trigger_labels,
)
from collector.engine.conditions import ConditionCompiler
from collector.engine.goals import Goal
from collector.engine.schedule import Calendar, CompiledSchedule
from collector.engine.scope import Getter, Predicate, Scope, path_getter
from collector.engine.templates import TemplateCompiler
from collector.engine.values import MISSING, UNSET, Missing, Value
from collector.engine.variables import Recording, Variable, event_field
from collector.errors import ConfigError
from collector.events import Event


class Choice:
    """The campaigns an event may trigger, ranked and cut into runs, and those it missed."""

    __slots__ = ("missed", "ranked", "runs")

    def __init__(self, ranked: tuple[Campaign, ...], missed: Missed | None) -> None:
        self.ranked = ranked
        self.runs: tuple[Run, ...] = runs(ranked)
        self.missed = missed


class Lookup:
    """One event name's campaigns, looked up by the text their trigger requires of one field."""

    __slots__ = ("choices", "otherwise", "read")

    def __init__(self, kind: str, path: str, ranked: tuple[Campaign, ...]) -> None:
        get = path_getter(path)  # what the trigger's `where` reads, so they agree
        self.read: Callable[[Event], object] = (
            (lambda event: get(event.context)) if kind == "context"
            else (lambda event: get(event.properties))
        )
        indexed = [c for c in ranked if c.key is not None and c.key[:2] == (kind, path)]
        rest = tuple(c for c in ranked if c.key is None or c.key[:2] != (kind, path))
        every = trigger_labels(c.id for c in indexed)
        by_value: dict[str, list[Campaign]] = {}
        for campaign in indexed:
            assert campaign.key is not None
            by_value.setdefault(campaign.key[2], []).append(campaign)
        self.choices: dict[str, Choice] = {}
        for value, hits in by_value.items():
            spared = frozenset(c.id for c in hits)
            missed = Missed(every, spared) if len(spared) < len(indexed) else None
            self.choices[value] = Choice(
                tuple(sorted((*rest, *hits), key=Campaign.rank)), missed
            )
        self.otherwise = Choice(rest, Missed(every))

    def choose(self, event: Event) -> Choice:
        """The event's candidates: the campaigns its value hits, and all not indexed here."""
        value = self.read(event)
        if value.__class__ is not str:  # an equality with a text holds for texts only
            return self.otherwise
        return self.choices.get(value, self.otherwise)


def _lookup(ranked: tuple[Campaign, ...]) -> Lookup | None:
    """The lookup of one event name's campaigns, on the field most of their triggers name."""
    fields: dict[tuple[str, str], int] = {}
    for campaign in ranked:
        if campaign.key is not None:
            field = campaign.key[:2]
            fields[field] = fields.get(field, 0) + 1
    if not fields:
        return None
    (kind, path), _ = max(fields.items(), key=lambda item: item[1])
    return Lookup(kind, path, ranked)


class _Registry:
    """Resolves names while compiling, and remembers which variables are used."""

    def __init__(self, config: ConfigFile, calendar: Calendar) -> None:
        self.config = config
        self.problems: list[str] = []
        self.url_cache: dict[str, str] = {}  # recent URL-encoded texts, shared by all templates
        self.variables: dict[str, Variable] = {}  # used: declared and implicit
        self._getters: dict[str, Getter] = {}
        self._segments: dict[str, Predicate] = {}
        self._pending: list[tuple[Variable, ConditionTree, str]] = []
        self._gates: dict[tuple[object, ...], Gate] = {}
        self.conditions = ConditionCompiler(
            variable=self.variable_getter,
            segment=self.segment,
            event_count=self.event_count,
            calendar=calendar,
        )

    def _use(self, name: str) -> Variable | None:
        variable = self.variables.get(name)
        if variable is not None:
            return variable
        spec = self.config.variables.get(name)
        if spec is None:
            return None
        field = None
        if spec.field is not None:
            field = event_field(spec.field)
            if field is None:
                self.problems.append(
                    f"variables.{name}.field: unknown field {spec.field!r} "
                    "(use properties.X, context.X, traits.X, event, type, user_id, ...)"
                )
        events = (spec.event,) if isinstance(spec.event, str) else tuple(spec.event)
        variable = Variable(
            name, events, spec.stat, spec.window, field, spec.default, spec.size
        )
        self.variables[name] = variable
        if spec.where is not None:
            self._pending.append((variable, spec.where, f"variables.{name}.where"))
        return variable

    def _memo(self, variable: Variable) -> Getter:
        getter = self._getters.get(variable.name)
        if getter is None:
            name, read = variable.name, variable.read

            def getter(scope: Scope) -> Value | Missing:
                values = scope.values
                value = values.get(name, UNSET)
                if value is UNSET:
                    value = values[name] = read(scope)
                return value

            self._getters[name] = getter
        return getter

    def variable_getter(self, name: str) -> Getter:
        """A memoised reader of a declared variable (unknown names read as missing)."""
        variable = self._use(name)
        return self._memo(variable) if variable is not None else (lambda scope: MISSING)

    def template_variable(self, name: str) -> Getter | None:
        """A reader of a declared variable, or None when `name` is not one."""
        variable = self._use(name)
        return self._memo(variable) if variable is not None else None

    def event_count(self, event: str, window: str) -> Getter:
        """A reader of how many times `event` happened in `window` (an implicit variable)."""
        name = f"~count:{event}:{window}"
        variable = self.variables.get(name)
        if variable is None:
            variable = self.variables[name] = Variable(name, (event,), "count", window)
        return self._memo(variable)

    def segment(self, name: str) -> Predicate:
        """A memoised membership test of a segment, compiled on first use."""
        found = self._segments.get(name)
        if found is not None:
            return found
        tree = self.config.segments.get(name)
        if tree is None:
            return lambda scope: False
        compiled: list[Predicate] = []

        def member(scope: Scope) -> bool:
            memo = scope.segments
            value = memo.get(name)
            if value is None:
                value = memo[name] = compiled[0](scope)
            return value

        self._segments[name] = member
        compiled.append(self.conditions.compile(tree.root, f"segments.{name}", self.problems))
        return member

    def gate(self, spec: CampaignSpec, calendar: Calendar) -> Gate:
        """The campaign's gate, shared with every campaign configured alike."""
        schedule = CompiledSchedule(spec.schedule, calendar) if spec.schedule else None
        published = spec.status == "published"
        users = spec.target.users
        segments = tuple(spec.target.segments)
        key = (published, schedule and schedule.key(), users, segments)
        found = self._gates.get(key)
        if found is None:
            found = self._gates[key] = Gate(
                published, schedule, users, tuple(self.segment(name) for name in segments)
            )
        return found

    def condition(self, tree: ConditionTree | None, path: str) -> Predicate | None:
        """Compile an optional condition."""
        return None if tree is None else self.conditions.compile(tree.root, path, self.problems)

    def settle(self) -> None:
        """Compile the `where` of every newly used variable (which may use more)."""
        while self._pending:
            variable, where, path = self._pending.pop()
            variable.where = self.conditions.compile(where.root, path, self.problems)

    def campaign(
        self, spec: CampaignSpec, path: str, calendar: Calendar, test_users: Predicate | None,
        updated_at: float, order: int,
    ) -> tuple[Campaign, bool]:
        """Compile one campaign; also says whether its templates read `page.*`."""
        prefix = f"{path}." if path else ""
        templates = TemplateCompiler(self.template_variable, self.problems, self.url_cache)
        if spec.variants is not None:
            actions = [
                templates.action(v.action.webhook, f"{prefix}variants[{i}].action.webhook")
                for i, v in enumerate(spec.variants)
            ]
        elif spec.action is not None:
            actions = [templates.action(spec.action.webhook, f"{prefix}action.webhook")]
        else:
            actions = []
        trigger = spec.trigger
        unless = trigger.unless if trigger is not None else None
        spacing = self.config.spacing
        goal = None
        if spec.goal is not None:
            value = None
            if spec.goal.value is not None:
                value = event_field(spec.goal.value)
                if value is None:
                    self.problems.append(
                        f"{prefix}goal.value: unknown field {spec.goal.value!r} "
                        "(use properties.X, context.X, traits.X, ...)"
                    )
            where = self.condition(spec.goal.where, f"{prefix}goal.where")
            goal = Goal(spec.id, spec.goal.event, spec.goal.window(), where, value)
        campaign = Campaign(
            spec,
            arms=build_arms(spec, actions) if actions else (),
            gate=self.gate(spec, calendar),
            where=self.condition(trigger.where if trigger else None, f"{prefix}trigger.where"),
            test_users=test_users,
            updated_at=updated_at,
            order=order,
            spacing=(
                None
                if spacing.seconds is None and spacing.page_views is None
                else (spacing.seconds, spacing.page_views)
            ),
            unless_where=self.condition(
                unless.where if unless else None, f"{prefix}trigger.unless.where"
            ),
            goal=goal,
        )
        return campaign, templates.uses_page


class Rules:
    """A compiled config: what the engine evaluates for every event."""

    def __init__(
        self,
        config: ConfigFile,
        calendar: Calendar,
        registry: _Registry,
        test_users: Predicate | None,
        campaigns: dict[str, tuple[Campaign, bool]],
    ) -> None:
        self.config = config
        self.calendar = calendar
        self.session_timeout = float(config.session_timeout)
        self.trait_bytes = config.state.trait_bytes
        self.test_users = test_users
        self.campaigns: dict[str, Campaign] = {cid: c for cid, (c, _) in campaigns.items()}
        self.keep_page = any(page for _, page in campaigns.values())
        self.variables: dict[str, Variable] = dict(registry.variables)
        by_event: dict[str, list[Variable]] = {}
        for variable in self.variables.values():
            for name in variable.events:
                by_event.setdefault(name, []).append(variable)
        # per event name: the variables fed unconditionally, and those with a `where`
        self.variables_by_event = {
            name: (
                Recording(v for v in found if v.where is None),
                tuple(v for v in found if v.where is not None),
            )
            for name, found in by_event.items()
        }
        self.segments: dict[str, Predicate] = {
            name: registry.segment(name) for name in config.segments
        }
        ranked = sorted(self.campaigns.values(), key=Campaign.rank)
        triggered: dict[str, list[Campaign]] = {}
        entered: dict[str, list[Campaign]] = {}
        for campaign in ranked:
            if campaign.segment_entered is not None:
                entered.setdefault(campaign.segment_entered, []).append(campaign)
            elif campaign.trigger_event is not None:
                triggered.setdefault(campaign.trigger_event, []).append(campaign)
        self.by_event = {name: tuple(found) for name, found in triggered.items()}
        self.runs_by_event = {name: runs(found) for name, found in self.by_event.items()}
        self.lookups = {
            name: lookup
            for name, found in self.by_event.items()
            if (lookup := _lookup(found)) is not None
        }
        self.by_segment = {name: tuple(found) for name, found in entered.items()}
        self.tracked = tuple((name, self.segments[name]) for name in sorted(entered))
        arming: dict[str, list[Campaign]] = {}
        cancelling: dict[str, list[Campaign]] = {}
        for campaign in ranked:
            if campaign.after is not None:
                arming.setdefault(campaign.after, []).append(campaign)
                if campaign.unless is not None:
                    cancelling.setdefault(campaign.unless, []).append(campaign)
        self.arming = {name: tuple(found) for name, found in arming.items()}
        self.cancelling = {name: tuple(found) for name, found in cancelling.items()}
        # a due timer is decided alone, as a run of one campaign
        self.absence_runs = {
            c.id: runs((c,)) for found in self.arming.values() for c in found
        }
        self.max_timers = config.state.max_timers
        goals: dict[str, list[Goal]] = {}
        for campaign in ranked:
            if campaign.goal is not None:
                goals.setdefault(campaign.goal.event, []).append(campaign.goal)
        self.goals_by_event = {name: tuple(found) for name, found in goals.items()}
        self.with_goals = tuple(c for c in ranked if c.goal is not None)
        self.timer_property_bytes = config.state.recent_event_bytes  # kept per pending wait
        self.stopping = tuple(c for c in ranked if c.stops)  # campaigns with stop conditions
        spacing = config.spacing
        self.count_page_views = spacing.page_views is not None

    def with_campaign(self, spec: CampaignSpec, updated_at: float) -> Rules:
        """These rules with one campaign added or replaced; raises ConfigError if it is invalid."""
        entries = [
            (c.spec, f"campaigns.{c.id}", c.updated_at, c.order) for c in self.campaigns.values()
        ]
        known = self.campaigns.get(spec.id)
        order = known.order if known else 1 + max((e[3] for e in entries), default=-1)
        entries = [e for e in entries if e[0].id != spec.id]
        entries.append((spec, "", updated_at, order))  # its problems are reported without a path
        return _build(self.config, self.calendar, entries)

    def without_campaign(self, campaign_id: str) -> Rules:
        """These rules without a campaign (no change if it is unknown)."""
        entries = [
            (c.spec, f"campaigns.{c.id}", c.updated_at, c.order)
            for cid, c in self.campaigns.items()
            if cid != campaign_id
        ]
        return _build(self.config, self.calendar, entries)


def compile_rules(config: ConfigFile, *, updated_at: Mapping[str, float] | None = None) -> Rules:
    """Compile a loaded config (raises ConfigError listing every problem with its path)."""
    # `updated_at`: campaigns' last-update times, for exclusivity ties; missing ones count as 0
    times = updated_at or {}
    entries = [
        (spec, f"campaigns[{index}]", times.get(spec.id, 0.0), index)
        for index, spec in enumerate(config.campaigns)
    ]
    return _build(config, Calendar(config.timezone), entries)


def _build(
    config: ConfigFile, calendar: Calendar, entries: list[tuple[CampaignSpec, str, float, int]]
) -> Rules:
    """Compile segments, test users and the campaigns (spec, path, updated_at, order) afresh."""
    registry = _Registry(config, calendar)
    for name in config.segments:
        registry.segment(name)
    test_users = registry.condition(config.test_users, "test_users")
    campaigns = {
        spec.id: registry.campaign(spec, path, calendar, test_users, at, order)
        for spec, path, at, order in entries
    }
    registry.settle()
    if registry.problems:
        raise ConfigError(registry.problems)
    return Rules(config, calendar, registry, test_users, campaigns)
