"""The admin API (`/admin/api/...`): campaigns, users, deliveries, paused endpoints, live events.

Without `TRIPWIRE_ADMIN_TOKEN` the admin API is off (404). Requests carry the token as a bearer
header, or as the dashboard's HttpOnly cookie (see `auth`); write keys never open anything here.
Campaign changes are validated exactly like the config file and take effect on the next event.
The operations here are shared with the dashboard; the endpoints read the running collector
from `request.app.state` (their routes are listed in `collector.app`).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import yaml
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from collector.admin import auth, editing
from collector.admin.guessing import retry_after
from collector.admin.openapi import document as openapi_document
from collector.admin.replay import replay_dead_letter
from collector.config.schema import CampaignSpec, encode_hook
from collector.config.settings import decode_campaign, one_line, parse_yaml
from collector.delivery.log import STATUSES, DeliveryAttempt
from collector.engine.engine import Engine
from collector.engine.profile import UserState, new_state
from collector.engine.templates import Suppressed
from collector.errors import (
    BadRequest,
    ConfigError,
    Forbidden,
    InvalidCampaign,
    NotFound,
    TooManyRequests,
    Unauthorized,
    UnsupportedMediaType,
)
from collector.events import Event
from collector.feed import EventFeed
from collector.runtime import Runtime
from collector.store.base import event_as_message
from collector.webhook import WebhookRequest

HEARTBEAT_SECONDS = 10.0
Endpoint = Callable[[Request], Awaitable[Response]]
TEST_EVENT = "Tripwire Test"
SAMPLE_USER_ID = "sample-user"
SAMPLE_VISITOR_ID = "sample-visitor"
SAMPLE_TRAITS = {"email": "sample@example.com", "name": "Sample User", "first_name": "Sample",
                 "last_name": "User", "plan": "free", "is_test": True}


# -- live events -----------------------------------------------------------------------------


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
    """Parse a campaign written as YAML or JSON (JSON is YAML), reporting syntax errors.

    Nesting past MAX_YAML_DEPTH and integers outside signed 64 bits are refused too.
    """
    try:
        return parse_yaml(text)
    except (yaml.YAMLError, ValueError) as exc:
        raise InvalidCampaign([f"not valid YAML or JSON: {one_line(exc)}"]) from exc


async def save_campaign(
    runtime: Runtime, campaign_id: str, raw: Any, *, if_unchanged: bool = False
) -> tuple[CampaignSpec, bool]:
    """Validate and apply a campaign; return it and whether it is new. Raises InvalidCampaign,
    and PreconditionFailed when `if_unchanged` and another process changed it meanwhile."""
    if not isinstance(raw, dict):
        raise InvalidCampaign(["$: expected a campaign mapping"])
    raw = {"id": campaign_id, **editing.writable(raw)}
    if raw["id"] != campaign_id:
        raise InvalidCampaign([f"id: {raw['id']!r} does not match the URL's {campaign_id!r}"])
    try:
        # compiled too, so a template's unknown name comes with every other problem
        spec = decode_campaign(
            raw, runtime.config, verify=lambda c: runtime.engine.rules.with_campaign(c, 0.0)
        )
        created = await runtime.put_campaign(spec, if_unchanged=if_unchanged)
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
    spec = existing_campaign(runtime, campaign_id)
    if spec is None:
        raise NotFound(f"no campaign {campaign_id!r}")
    return spec


def existing_campaign(runtime: Runtime, campaign_id: str) -> CampaignSpec | None:
    """The campaign with this id, if there is one."""
    return next((spec for spec in runtime.config.campaigns if spec.id == campaign_id), None)


def campaign_etag(spec: CampaignSpec | None) -> str | None:
    """A campaign's ETag (None when there is no campaign)."""
    return None if spec is None else editing.etag(campaign_as_data(spec))


def campaign_stats(runtime: Runtime) -> dict[str, dict[str, Any]]:
    """Per campaign: how many times it fired, and its suppressions counted by reason."""
    stats: dict[str, dict[str, Any]] = {}
    for (campaign, outcome, reason), count in runtime.campaign_counts().items():
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
        state = await runtime.users.state(user)
        if state is None:
            raise NotFound(f"no user {user!r}")
    else:
        state = new_state(SAMPLE_USER_ID, now)
        state.user_id = SAMPLE_USER_ID
        state.anonymous_ids = [SAMPLE_VISITOR_ID]
        state.traits = dict(SAMPLE_TRAITS)
    request = render_test(runtime.engine, campaign_id, state, now)
    return await runtime.deliveries.send_now(request)


def render_test(engine: Engine, campaign_id: str, state: UserState, now: float) -> WebhookRequest:
    """The webhook a campaign would send for this user now, ignoring its conditions and caps."""
    event = Event(
        type="track", name=TEST_EVENT, message_id=f"test_{uuid.uuid4().hex}",
        user_id=state.user_id,
        anonymous_id=state.anonymous_ids[-1] if state.anonymous_ids else None,
        timestamp=now, received_at=now,
    )
    try:
        return engine.preview(campaign_id, state, now, event)
    except Suppressed as suppressed:
        raise InvalidCampaign(
            [f"{suppressed.reason}: {suppressed.detail} (add a fallback, #{{name|fallback}}, "
             "or test with a real user)"]
        ) from None


def resume(runtime: Runtime, campaign_id: str, endpoint: str | None) -> int:
    """Resume a campaign's endpoints paused after 410 Gone (all, or one); NotFound if none."""
    resumed = runtime.deliveries.resume(campaign_id, endpoint)
    if not resumed:
        which = f"endpoint {endpoint!r} of campaign" if endpoint else "endpoint of campaign"
        raise NotFound(f"no paused {which} {campaign_id!r}")
    return resumed


# -- endpoints -------------------------------------------------------------------------------


def too_many_tries(request: Request) -> TooManyRequests:
    """The refusal of a client that tried too many wrong tokens."""
    wait = retry_after(auth.wait_before_trying(request))
    return TooManyRequests(
        f"too many wrong tokens from this address; try again in {wait} s",
        headers={"Retry-After": wait},
    )


def guarded(endpoint: Endpoint) -> Endpoint:
    """An API endpoint answering 404 when admin is off, 401 without the token, 403 cross-origin,
    429 after too many wrong tokens."""

    async def guarded_endpoint(request: Request) -> Response:
        refused = await auth.refusal(request)
        if refused == "off":
            raise NotFound("the admin API is off: set TRIPWIRE_ADMIN_TOKEN to turn it on")
        if refused == "unauthorized":
            raise Unauthorized("admin token required: Authorization: Bearer <token>")
        if refused == "cross_origin":
            raise Forbidden("cross-origin admin request refused")
        if refused == "too_many_tries":
            raise too_many_tries(request)
        return await endpoint(request)

    guarded_endpoint.__name__ = endpoint.__name__
    guarded_endpoint.__doc__ = endpoint.__doc__
    return guarded_endpoint


_NO_STATS: dict[str, Any] = {"fired": 0, "suppressed": {}}


@guarded
async def list_campaigns(request: Request) -> Response:
    """GET /admin/api/campaigns: every campaign with its statistics."""
    runtime = auth.runtime_of(request)
    stats = campaign_stats(runtime)
    stopped = await runtime.stopped()
    return JSONResponse(
        {
            "campaigns": [
                {
                    **campaign_as_data(spec),
                    "stats": stats.get(spec.id, _NO_STATS),
                    "stopped": stopped.get(spec.id),
                }
                for spec in runtime.config.campaigns
            ]
        }
    )


@guarded
async def get_campaign(request: Request) -> Response:
    """GET /admin/api/campaigns/{id}: one campaign with its statistics (read-only) and ETag."""
    runtime = auth.runtime_of(request)
    spec = find_campaign(runtime, request.path_params["id"])
    stats = campaign_stats(runtime).get(spec.id, _NO_STATS)
    stopped = (await runtime.stopped()).get(spec.id)
    data = campaign_as_data(spec)
    return JSONResponse(
        {**data, "stats": stats, "stopped": stopped}, headers={"ETag": editing.etag(data)}
    )


@guarded
async def put_campaign(request: Request) -> Response:
    """PUT /admin/api/campaigns/{id}: create or replace a campaign (YAML or JSON); keys left
    out take their defaults, read-only keys (`stats`, `stopped`) are ignored."""
    runtime = auth.runtime_of(request)
    campaign_id = request.path_params["id"]
    raw = parse_campaign_text((await request.body()).decode("utf-8", "replace"))
    async with editing.write_lock(request):
        conditional = await latest_if_conditional(request, runtime)
        editing.check_preconditions(
            request, campaign_etag(existing_campaign(runtime, campaign_id))
        )
        spec, created = await save_campaign(runtime, campaign_id, raw, if_unchanged=conditional)
    return _campaign_answer(spec, 201 if created else 200)


@guarded
async def patch_campaign(request: Request) -> Response:
    """PATCH /admin/api/campaigns/{id}: a JSON merge patch (RFC 7396); keys it leaves out keep
    their values, null removes a key (back to its default)."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type not in ("application/merge-patch+json", "application/json"):
        raise UnsupportedMediaType(
            "Content-Type: send a JSON merge patch as application/merge-patch+json"
        )
    # JSON is YAML: parsed like a PUT's body, with its bounds on nesting and integers.
    patch = parse_campaign_text((await request.body()).decode("utf-8", "replace"))
    if not isinstance(patch, dict):
        raise BadRequest("$: a merge patch of a campaign is a JSON object")
    runtime = auth.runtime_of(request)
    campaign_id = request.path_params["id"]
    async with editing.write_lock(request):
        conditional = await latest_if_conditional(request, runtime)
        current = find_campaign(runtime, campaign_id)
        data = campaign_as_data(current)
        editing.check_preconditions(request, editing.etag(data))
        merged = editing.merge_patch(data, editing.writable(patch))
        spec, _ = await save_campaign(runtime, campaign_id, merged, if_unchanged=conditional)
    return _campaign_answer(spec, 200)


@guarded
async def delete_campaign(request: Request) -> Response:
    """DELETE /admin/api/campaigns/{id} (honours If-Match)."""
    runtime = auth.runtime_of(request)
    campaign_id = request.path_params["id"]
    async with editing.write_lock(request):
        conditional = await latest_if_conditional(request, runtime)
        current = existing_campaign(runtime, campaign_id)
        if current is None:
            raise NotFound(f"no campaign {campaign_id!r}")
        editing.check_preconditions(request, campaign_etag(current))
        await runtime.remove_campaign(campaign_id, if_unchanged=conditional)
    return Response(status_code=204)


async def latest_if_conditional(request: Request, runtime: Runtime) -> bool:
    """Whether the write is conditional (If-Match, If-None-Match); if so, the campaigns other
    processes changed (Redis mode) are applied here first, so the check sees the latest."""
    conditional = "if-match" in request.headers or "if-none-match" in request.headers
    if conditional:
        await runtime.refresh_campaigns()
    return conditional


def _campaign_answer(spec: CampaignSpec, status: int) -> Response:
    data = campaign_as_data(spec)
    return JSONResponse(data, status_code=status, headers={"ETag": editing.etag(data)})


@guarded
async def openapi(_: Request) -> Response:
    """GET /admin/api/openapi.json: this API as an OpenAPI 3.1 document."""
    return JSONResponse(openapi_document())


@guarded
async def results(request: Request) -> Response:
    """GET /admin/api/campaigns/{id}/results: every arm against control (A/B results)."""
    runtime = auth.runtime_of(request)
    spec = find_campaign(runtime, request.path_params["id"])
    return JSONResponse(await runtime.results(spec))


@guarded
async def fire_test(request: Request) -> Response:
    """POST /admin/api/campaigns/{id}/test: send the campaign's webhook once, now."""
    options = await _options(request)
    user = options.get("user")
    if user is not None and not isinstance(user, str):
        raise BadRequest("$.user: expected a string (a user id, anonymous id or profile key)")
    attempt = await test_fire(auth.runtime_of(request), request.path_params["id"], user)
    return JSONResponse(msgspec.to_builtins(attempt))


@guarded
async def resume_campaign(request: Request) -> Response:
    """POST /admin/api/campaigns/{id}/resume: deliver again to endpoints paused after 410."""
    endpoint = (await _options(request)).get("endpoint")
    if endpoint is not None and not isinstance(endpoint, str):
        raise BadRequest("$.endpoint: expected a string (an endpoint URL)")
    resumed = resume(auth.runtime_of(request), request.path_params["id"], endpoint)
    return JSONResponse({"resumed": resumed})


@guarded
async def paused_endpoints(request: Request) -> Response:
    """GET /admin/api/paused: the campaigns' endpoints paused after answering 410 Gone."""
    paused = auth.runtime_of(request).dispatcher.paused()
    return JSONResponse({"paused": msgspec.to_builtins(paused)})


@guarded
async def user(request: Request) -> Response:
    """GET /admin/api/users/{identity}: a profile and its recent events."""
    identity = request.path_params["identity"]
    view = await auth.runtime_of(request).store.lookup(identity, time.time())
    if view is None:
        raise NotFound(f"no user {identity!r}")
    return JSONResponse(
        {"key": view.key, "profile": view.profile, "recent_events": view.recent_events}
    )


@guarded
async def deliveries(request: Request) -> Response:
    """GET /admin/api/deliveries: the delivery log, filtered."""
    query = request.query_params
    status = query.get("status") or None
    if status is not None and status not in STATUSES:
        raise BadRequest(f"status: expected one of {', '.join(STATUSES)}")
    try:
        limit = int(query.get("limit") or 100)
    except ValueError:
        raise BadRequest("limit: expected a whole number") from None
    found = await auth.runtime_of(request).deliveries.log(
        campaign=query.get("campaign") or None,
        status=status,
        delivery_id=query.get("id") or None,
        limit=max(1, min(limit, 1000)),
    )
    return JSONResponse({"deliveries": msgspec.to_builtins(found)})


@guarded
async def replay(request: Request) -> Response:
    """POST /admin/api/deliveries/{id}/replay: send a dead letter again, as stored or
    re-rendered from the campaign's current action; the answer says which, and why."""
    answer = await replay_dead_letter(auth.runtime_of(request), request.path_params["id"])
    return JSONResponse(msgspec.to_builtins(answer))


@guarded
async def events(request: Request) -> Response:
    """GET /admin/api/events/stream: accepted events as Server-Sent Events."""
    backlog = request.query_params.get("backlog", "1") != "0"
    feed = auth.runtime_of(request).events
    if feed.full:
        raise TooManyRequests(
            f"{feed.max_subscribers} live event streams are open already; close one",
            headers={"Retry-After": "5"},
        )
    return StreamingResponse(
        event_stream(feed, backlog),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def _options(request: Request) -> dict[str, Any]:
    """An optional YAML or JSON mapping in the body (empty when there is none)."""
    body = await request.body()
    options = parse_campaign_text(body.decode("utf-8", "replace")) if body.strip() else {}
    return options if isinstance(options, dict) else {}
