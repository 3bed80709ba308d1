"""The narrow services the admin API and the dashboard use, instead of the running parts.

    runtime.users.lookup("alice", now)          # a user as the lookup shows them
    runtime.deliveries.send_now(request)        # a test-fire
    runtime.deliveries.log(campaign="welcome")  # the latest attempts

Admin reads users (never the store's load and commit) and acts on deliveries (never the
outbox's claims and acks); campaigns, variables and segments change through `Runtime`'s own
methods and `runtime.definitions`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from collector.delivery.dispatcher import Dispatcher, PausedEndpoint, Replayed
from collector.delivery.log import DeliveryAttempt, DeliveryLog
from collector.delivery.outbox import DeadLetter, Outbox
from collector.engine.profile import UserState
from collector.store.base import Store, UserView
from collector.webhook import WebhookRequest


class Users:
    """Users as admin may see them: looked up by any id, or sampled."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def lookup(self, identity: str, now: float) -> UserView | None:
        """A user by anonymous id, user id or key, as the lookup shows them."""
        return await self._store.lookup(identity, now)

    async def state(self, identity: str) -> UserState | None:
        """A user's engine state (for dry runs and re-rendered replays; not to be changed)."""
        return await self._store.user_state(identity)

    def sample(
        self, deadline: float, limit: int | None = None
    ) -> AsyncIterator[tuple[UserState, int]]:
        """Profiles until the deadline (see `Store.sample`), each with how many there are."""
        return self._store.sample(deadline, limit)


class Deliveries:
    """What admin may do with deliveries: send one now, replay dead letters, unpause endpoints,
    and read the delivery log."""

    def __init__(self, dispatcher: Dispatcher, outbox: Outbox, log: DeliveryLog) -> None:
        self._dispatcher = dispatcher
        self._outbox = outbox
        self._log = log

    async def send_now(self, request: WebhookRequest) -> DeliveryAttempt:
        """Send one webhook now, once (a test-fire); it is logged."""
        return await self._dispatcher.send_now(request)

    async def dead_letter(self, delivery_id: str) -> DeadLetter | None:
        """The dead letter with this id, if there is one."""
        return await self._dispatcher.dead_letter(delivery_id)

    async def dead_letters(self, campaign: str | None = None) -> list[DeadLetter]:
        """Dead letters, oldest first, of one campaign or all."""
        return await self._outbox.dead_letters(campaign=campaign)

    async def replay(
        self, delivery_id: str, replacement: WebhookRequest | None = None
    ) -> Replayed:
        """Send a dead letter again as a fresh delivery (the replacement when given)."""
        return await self._dispatcher.replay(delivery_id, replacement)

    def paused(self) -> list[PausedEndpoint]:
        """Campaign endpoints paused after answering 410 Gone."""
        return self._dispatcher.paused()

    def resume(self, campaign_id: str, endpoint: str | None = None) -> int:
        """Unpause a campaign's endpoints (all, or one); how many were resumed."""
        return self._dispatcher.resume(campaign_id, endpoint)

    async def log(
        self,
        *,
        campaign: str | None = None,
        status: str | None = None,
        delivery_id: str | None = None,
        limit: int = 100,
    ) -> list[DeliveryAttempt]:
        """The latest attempts, newest first."""
        return await self._log.query(
            campaign=campaign, status=status, delivery_id=delivery_id, limit=limit
        )
