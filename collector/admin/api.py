"""The admin API (`/admin/api/...`): campaigns, users, deliveries and live events.

Without `TRIPWIRE_ADMIN_TOKEN` the admin API is off (404). Requests carry the token as a bearer
header, or as the dashboard's HttpOnly cookie; write keys never open anything here. Campaign
changes are validated exactly like the config file and take effect on the next event.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import msgspec
import yaml
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route

from collector.config.schema import CampaignSpec, encode_hook
from collector.config.settings import decode_campaign
from collector.delivery.log import STATUSES, DeliveryAttempt
from collector.engine.profile import UserState, new_state
from collector.engine.rules import Rules
from collector.engine.scope import Scope
from collector.engine.templates import Suppressed
from collector.errors import (
    BadRequest,
    ConfigError,
    Forbidden,
    InvalidCampaign,
    NotFound,
    Unauthorized,
)
from collector.events import Event
from collector.store.base import event_as_message
from collector.webhook import WebhookRequest, webhook_id_for

if TYPE_CHECKING:
    from collector.runtime import Runtime

COOKIE = "tripwire_admin"
HEARTBEAT_SECONDS = 10.0
Endpoint = Callable[[Request], Awaitable[Response]]
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
TEST_EVENT = "Tripwire Test"
SAMPLE_USER_ID = "sample-user"
SAMPLE_VISITOR_ID = "sample-visitor"
SAMPLE_TRAITS = {"email": "sample@example.com", "name": "Sample User", "first_name": "Sample",
                 "last_name": "User", "plan": "free", "is_test": True}


# -- auth ------------------------------------------------------------------------------------


def authorized(request: Request, token: str) -> bool:
    """True when the request carries the admin token as a bearer header or the dashboard cookie."""
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        given = header[7:].strip()
    else:
        given = request.cookies.get(COOKIE, "")
    return bool(given) and hmac.compare_digest(given.encode(), token.encode())


def same_origin(request: Request) -> bool:
    """False when a browser says the request comes from another origin (a forged form post)."""
    origin = request.headers.get("origin")
    if origin is None or request.headers.get("authorization"):
        return True
    return origin == f"{request.url.scheme}://{request.url.netloc}"


def protect(token: str | None, endpoint: Endpoint) -> Endpoint:
    """Wrap an endpoint so it answers 401 without the admin token, 404 when admin is off."""

    async def guarded(request: Request) -> Response:
        if not token:
            raise NotFound("the admin API is off: set TRIPWIRE_ADMIN_TOKEN to turn it on")
        if not authorized(request, token):
            raise Unauthorized("admin token required: Authorization: Bearer <token>")
        if request.method not in SAFE_METHODS and not same_origin(request):
            raise Forbidden("cross-origin admin request refused")
        return await endpoint(request)

    return guarded


# -- live events -----------------------------------------------------------------------------


class EventFeed:
    """Accepted events, fanned out to live subscribers; the last few kept for a new subscriber."""

    def __init__(self, keep: int = 50, queue_size: int = 1000) -> None:
        self.recent: deque[Event] = deque(maxlen=keep)
        self.closed = False
        self._queue_size = queue_size
        self._subscribers: set[asyncio.Queue[Event | None]] = set()

    def publish(self, events: Sequence[Event]) -> None:
        """Hand accepted events to every subscriber; a slow one loses events, never blocks."""
        self.recent.extend(events)
        for queue in self._subscribers:
            for event in events:
                if not queue.full():
                    queue.put_nowait(event)

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[asyncio.Queue[Event | None]]:
        """A queue receiving each event published from now on (None when the feed closes)."""
        queue: asyncio.Queue[Event | None] = asyncio.Queue(self._queue_size)
        self._subscribers.add(queue)
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)

    def close(self) -> None:
        """End every live stream (the server is shutting down)."""
        self.closed = True
        for queue in self._subscribers:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)


async def event_stream(feed: EventFeed, backlog: bool) -> AsyncIterator[bytes]:
    """Server-Sent Events: the last few events (`backlog`), then each accepted one (`event`)."""
    yield b"retry: 1000\n\n"
    with feed.subscribe() as queue:
        if backlog:
            for event in list(feed.recent):
                yield _sse("backlog", event_as_message(event))
        while not feed.closed:
            try:
                latest = await asyncio.wait_for(queue.get(), HEARTBEAT_SECONDS)
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            if latest is None:
                break
            yield _sse("event", event_as_message(latest))


def _sse(kind: str, data: Any) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (kind.encode(), msgspec.json.encode(data))


# -- campaigns -------------------------------------------------------------------------------


def campaign_as_data(spec: CampaignSpec) -> dict[str, Any]:
    """A campaign as plain JSON-compatible data, as it would be written in the config file."""
    data: dict[str, Any] = msgspec.to_builtins(spec, enc_hook=encode_hook)
    return data


def parse_campaign_text(text: str) -> Any:
    """Parse a campaign written as YAML or JSON (JSON is YAML), reporting syntax errors."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidCampaign([f"not valid YAML or JSON: {exc}"]) from exc


async def save_campaign(runtime: Runtime, campaign_id: str, raw: Any) -> tuple[CampaignSpec, bool]:
    """Validate and apply a campaign; return it and whether it is new. Raises InvalidCampaign."""
    if not isinstance(raw, dict):
        raise InvalidCampaign(["$: expected a campaign mapping"])
    raw = {"id": campaign_id, **raw}
    if raw["id"] != campaign_id:
        raise InvalidCampaign([f"id: {raw['id']!r} does not match the URL's {campaign_id!r}"])
    try:
        spec = decode_campaign(raw, runtime.config)
        created = await runtime.put_campaign(spec)
    except ConfigError as exc:
        raise InvalidCampaign(exc.problems) from exc
    return spec, created


async def set_status(runtime: Runtime, campaign_id: str, status: str) -> CampaignSpec:
    """Pause, publish, archive or draft a campaign."""
    spec = find_campaign(runtime, campaign_id)
    changed = {**campaign_as_data(spec), "status": status}
    return (await save_campaign(runtime, campaign_id, changed))[0]


def find_campaign(runtime: Runtime, campaign_id: str) -> CampaignSpec:
    """The campaign with this id, or NotFound."""
    for spec in runtime.config.campaigns:
        if spec.id == campaign_id:
            return spec
    raise NotFound(f"no campaign {campaign_id!r}")


def campaign_stats(runtime: Runtime) -> dict[str, dict[str, Any]]:
    """Per campaign: how many times it fired, and its suppressions counted by reason."""
    stats: dict[str, dict[str, Any]] = {}
    for (campaign, outcome, reason), count in runtime.metrics.decisions.items():
        entry = stats.setdefault(campaign, {"fired": 0, "suppressed": {}})
        if outcome == "fired":
            entry["fired"] += count
        else:
            entry["suppressed"][reason] = entry["suppressed"].get(reason, 0) + count
    return stats


async def test_fire(runtime: Runtime, campaign_id: str, user: str | None) -> DeliveryAttempt:
    """Render the campaign's webhook for a user (or a sample one) and send it once, now."""
    find_campaign(runtime, campaign_id)
    now = time.time()
    if user:
        state = await runtime.store.user_state(user)
        if state is None:
            raise NotFound(f"no user {user!r}")
    else:
        state = new_state(SAMPLE_USER_ID, now)
        state.user_id = SAMPLE_USER_ID
        state.anonymous_ids = [SAMPLE_VISITOR_ID]
        state.traits = dict(SAMPLE_TRAITS)
    request = render_test(runtime.engine.rules, campaign_id, state, now)
    return await runtime.dispatcher.send_now(request)


def render_test(rules: Rules, campaign_id: str, state: UserState, now: float) -> WebhookRequest:
    """The webhook a campaign would send for this user now, ignoring its conditions and caps."""
    campaign = rules.campaigns[campaign_id]
    arm = campaign.pick(state.key) or campaign.arms[0]  # the control group tests the first variant
    message_id = f"test_{uuid.uuid4().hex}"
    event = Event(
        type="track", name=TEST_EVENT, message_id=message_id, user_id=state.user_id,
        anonymous_id=state.anonymous_ids[-1] if state.anonymous_ids else None,
        timestamp=now, received_at=now,
    )
    number = state.session.number if state.session is not None else 1
    scope = Scope(state, event, now, rules.calendar, number)
    scope.campaign_id = campaign.id
    scope.campaign_name = campaign.name
    scope.variant_id = arm.variant_id
    scope.delivery_id = webhook_id_for(campaign.id, arm.variant_id, message_id)
    try:
        url, headers, body = arm.template.render(scope)
    except Suppressed as suppressed:
        raise InvalidCampaign(
            [f"{suppressed.reason}: {suppressed.detail} (add a fallback, #{{name|fallback}}, "
             "or test with a real user)"]
        ) from None
    return WebhookRequest(
        webhook_id=scope.delivery_id, campaign_id=campaign.id, variant_id=arm.variant_id,
        user_key=state.key, event_id=message_id, method=arm.template.method, url=url,
        headers=headers, body=body, created_at=now,
    )


# -- routes ----------------------------------------------------------------------------------


def admin_routes(runtime: Runtime) -> list[BaseRoute]:
    """The admin API routes."""
    token = runtime.settings.admin_token or None  # empty = off

    async def list_campaigns(_: Request) -> Response:
        stats = campaign_stats(runtime)
        stopped = await runtime.stopped()
        empty: dict[str, Any] = {"fired": 0, "suppressed": {}}
        return JSONResponse(
            {
                "campaigns": [
                    {
                        **campaign_as_data(spec),
                        "stats": stats.get(spec.id, empty),
                        "stopped": stopped.get(spec.id),
                    }
                    for spec in runtime.config.campaigns
                ]
            }
        )

    async def get_campaign(request: Request) -> Response:
        spec = find_campaign(runtime, request.path_params["id"])
        stats = campaign_stats(runtime).get(spec.id, {"fired": 0, "suppressed": {}})
        stopped = (await runtime.stopped()).get(spec.id)
        return JSONResponse({**campaign_as_data(spec), "stats": stats, "stopped": stopped})

    async def results(request: Request) -> Response:
        spec = find_campaign(runtime, request.path_params["id"])
        return JSONResponse(await runtime.results(spec))

    async def put_campaign(request: Request) -> Response:
        raw = parse_campaign_text((await request.body()).decode("utf-8", "replace"))
        spec, created = await save_campaign(runtime, request.path_params["id"], raw)
        return JSONResponse(campaign_as_data(spec), status_code=201 if created else 200)

    async def delete_campaign(request: Request) -> Response:
        if not await runtime.remove_campaign(request.path_params["id"]):
            raise NotFound(f"no campaign {request.path_params['id']!r}")
        return Response(status_code=204)

    async def fire_test(request: Request) -> Response:
        body = await request.body()
        options = parse_campaign_text(body.decode("utf-8", "replace")) if body.strip() else {}
        user = options.get("user") if isinstance(options, dict) else None
        attempt = await test_fire(runtime, request.path_params["id"], user)
        return JSONResponse(msgspec.to_builtins(attempt))

    async def user(request: Request) -> Response:
        view = await runtime.store.lookup(request.path_params["identity"], time.time())
        if view is None:
            raise NotFound(f"no user {request.path_params['identity']!r}")
        return JSONResponse(
            {"key": view.key, "profile": view.profile, "recent_events": view.recent_events}
        )

    async def deliveries(request: Request) -> Response:
        query = request.query_params
        status = query.get("status") or None
        if status is not None and status not in STATUSES:
            raise BadRequest(f"status: expected one of {', '.join(STATUSES)}")
        try:
            limit = int(query.get("limit") or 100)
        except ValueError:
            raise BadRequest("limit: expected a whole number") from None
        found = await runtime.delivery_log.query(
            campaign=query.get("campaign") or None,
            status=status,
            delivery_id=query.get("id") or None,
            limit=max(1, min(limit, 1000)),
        )
        return JSONResponse({"deliveries": msgspec.to_builtins(found)})

    async def replay(request: Request) -> Response:
        delivery_id = request.path_params["id"]
        replayed = await runtime.dispatcher.replay(delivery_id)
        if not replayed.count:
            raise NotFound(f"no dead letter {delivery_id!r}: only failed deliveries replay")
        return JSONResponse(msgspec.to_builtins(replayed))

    async def events(request: Request) -> Response:
        backlog = request.query_params.get("backlog", "1") != "0"
        return StreamingResponse(
            event_stream(runtime.events, backlog),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    def route(path: str, endpoint: Endpoint, methods: list[str]) -> Route:
        async def answered(request: Request) -> Response:
            try:
                return await endpoint(request)
            except InvalidCampaign as exc:
                payload = {"error": exc.code, "detail": exc.detail, "problems": exc.problems}
                return JSONResponse(payload, status_code=exc.status)

        return Route(path, protect(token, answered), methods=methods)

    return [
        Mount(
            "/admin/api",
            routes=[
                route("/campaigns", list_campaigns, ["GET"]),
                route("/campaigns/{id}", get_campaign, ["GET"]),
                route("/campaigns/{id}", put_campaign, ["PUT"]),
                route("/campaigns/{id}", delete_campaign, ["DELETE"]),
                route("/campaigns/{id}/test", fire_test, ["POST"]),
                route("/campaigns/{id}/results", results, ["GET"]),
                route("/users/{identity:path}", user, ["GET"]),
                route("/deliveries", deliveries, ["GET"]),
                route("/deliveries/{id}/replay", replay, ["POST"]),
                route("/events/stream", events, ["GET"]),
            ],
        )
    ]
