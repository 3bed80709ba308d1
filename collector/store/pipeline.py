"""The per-event pipeline, written once for every store: dedupe, resolve, merge, run, commit.

    result = await ingest(store, events, now)

A request's events go through one loop whatever holds the state:

1. messageIds repeated within the request are duplicates at once;
2. the store loads what the events name (`Store.load`): identities, profiles, seen messageIds;
3. `run_events` resolves identities, merges profiles and runs the engine on every event, in
   order, without I/O, and returns a `Plan`;
4. the store commits the plan (`Store.commit`) and names the profiles whose commit conflicted
   (another process wrote them meanwhile); their events go round again. A store whose state
   lives in this process never conflicts.

The failure rule is the same for every store: when the engine fails on an event, nothing of the
attempt is committed (`Store.discard`), the event is reported as rejected, and the others go
round again. A rejected event leaves no trace: its profile is as it was and its messageId is not
marked seen.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

from collector.engine.campaigns import Missed
from collector.engine.profile import Decision
from collector.errors import Unavailable
from collector.events import Event
from collector.store import identity
from collector.store.base import NOT_PROCESSED, IngestResult, Store
from collector.store.plan import Outcome, run_events
from collector.webhook import WebhookRequest

MAX_ATTEMPTS = 50  # conflicts tolerated before a request is answered 503


async def ingest(store: Store, events: Sequence[Event], now: float) -> IngestResult:
    """Dedupe and process each event against its user's state, in order, atomically per user."""
    digests = [identity.dedupe_key(event) for event in events]
    group, group_digests = events, digests  # what the next attempt runs
    pending = list(range(len(events)))  # their positions in the request
    duplicates = 0
    if len(set(digests)) < len(digests):  # a messageId repeated within the request
        firsts: set[bytes] = set()
        pending = []
        for position, digest in enumerate(digests):
            if digest in firsts:
                duplicates += 1
            else:
                firsts.add(digest)
                pending.append(position)
        group = [events[i] for i in pending]
        group_digests = [digests[i] for i in pending]
    done: list[Outcome] = []  # what each event applied did, by position in the request
    rejected: list[tuple[int, str]] = []
    accepted = 0
    async with store.holding(group):
        attempt = 0
        while pending and attempt < MAX_ATTEMPTS:
            if attempt:  # another process just wrote these users: let it finish
                await asyncio.sleep(random.uniform(0, 0.001 * min(attempt, 20)))
            loaded = await store.load(group, group_digests, now)
            plan = run_events(store.engine(), group, group_digests, now, loaded)
            if plan.failed:  # nothing is written: run the others again without them
                store.discard(loaded)
                for local in plan.failed:
                    rejected.append((pending[local], NOT_PROCESSED))
                failed = set(plan.failed)
                keep = [local for local in range(len(pending)) if local not in failed]
            else:
                attempt += 1
                conflicted = await store.commit(plan, loaded, now)
                conflicts = {i for key in conflicted for i in plan.owner_events.get(key, ())}
                # a duplicate (seen before) is never run, so it never conflicts
                accepted += len(pending) - len(conflicts) - len(plan.duplicates)
                duplicates += len(plan.duplicates)
                for outcome in plan.outcomes:
                    if outcome.position not in conflicts:
                        position = pending[outcome.position]
                        if position != outcome.position:
                            outcome = outcome._replace(position=position)
                        done.append(outcome)
                if not conflicts:
                    pending = []
                    break
                keep = sorted(conflicts)
            pending = [pending[i] for i in keep]
            group = [group[i] for i in keep]
            group_digests = [group_digests[i] for i in keep]
        if pending:
            raise Unavailable("too many concurrent updates of one user; retry", retry_after=1)
    rejected.sort()
    if len(done) == 1:  # the commonest case: one event
        outcome = done[0]
        return IngestResult(
            accepted, duplicates, outcome.webhooks, outcome.decisions, rejected,
            list(outcome.missed),
        )
    if attempt > 1:  # events run again after a conflict: back in the order they came
        done.sort(key=lambda outcome: outcome.position)
    webhooks: list[WebhookRequest] = []
    decisions: list[Decision] = []
    missed: list[Missed] = []
    for outcome in done:
        webhooks += outcome.webhooks
        decisions += outcome.decisions
        missed += outcome.missed
    return IngestResult(accepted, duplicates, webhooks, decisions, rejected, missed)
