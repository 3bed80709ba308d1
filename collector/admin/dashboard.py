"""The admin dashboard (`/admin/`): server-rendered pages over the admin operations.

Login turns the admin token into an HttpOnly, SameSite=Strict cookie; every other page needs
it and sends the browser to the login page without it. Changes are plain form posts answered
with a redirect (a notice rides along in the query string); the live events page is the one
place where script does real work. Page templates live in `collector/admin/templates/`. The
pages read the running collector from `request.app.state`; `collector.app` lists their routes.

Past 500 lines on purpose: the pages' handlers and the HTML they render, page by page, read
best side by side; shared layout and guards are in `pages.py`, the builders in `builder.py`.
"""

from __future__ import annotations

import contextlib
import functools
import html
import string
import time
from collections.abc import Iterable
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo

import msgspec
import yaml
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from collector.admin import api as admin
from collector.admin import auth, builder, charts, editing
from collector.admin.audiences import as_yaml
from collector.admin.guessing import retry_after
from collector.admin.pages import (
    guarded,
    plain,
    read_form,
    redirect,
    render_page,
)
from collector.admin.replay import replay_dead_letter
from collector.config.durations import format_duration
from collector.config.schema import CampaignSpec, campaign_as_written
from collector.delivery.dispatcher import PausedEndpoint
from collector.delivery.log import STATUSES, DeliveryAttempt
from collector.errors import InvalidCampaign, NotFound, PreconditionFailed, Unavailable
from collector.events import Event
from collector.store.sessions import SESSION_SECONDS

if TYPE_CHECKING:
    from collector.runtime import Runtime

COOKIE_SECONDS = SESSION_SECONDS
REPLAYABLE = frozenset({"failed", "dead", "refused", "paused"})
STATUS_CHOICES = ("published", "paused", "draft", "archived")
TEMPLATES = (
    "layout", "login", "campaigns", "editor", "editor_side",
    "events", "deliveries", "users", "user",
)

WHY = {
    "status": "the campaign is not published (draft, paused or archived)",
    "schedule": "the event came outside the campaign's schedule",
    "target": "the user is not in the campaign's target users (members or visitors)",
    "not_in_segment": "the user is not in every one of the campaign's target segments",
    "trigger": "the event did not match the campaign's trigger",
    "test_mode": "the campaign is in test mode and the user is not a test user",
    "control_group": "the user is in the control group: their sticky bucket is outside the "
    "delivery rate (or every variant)",
    "frequency": "a frequency cap was reached (per event, session or user, or per day)",
    "spacing": "another campaign fired for this user too recently (project-wide spacing)",
    "max_deliveries": "the campaign reached its stop condition: max_deliveries in total",
    "max_deliveries_per_day": "the campaign reached its stop condition: max_deliveries_per_day "
    "for today",
    "exclusive": "another exclusive campaign with a higher priority fired on the same event",
    "missing_variable": "a #{placeholder} had no value, no fallback and no default",
    "invalid_header": "a rendered header value held a line break",
    "quota_exceeded": "the monthly webhook quota is used up",
}


def _why(reason: Any, detail: Any) -> str:
    """Why a campaign was suppressed, in words, naming what the reason is about when known."""
    if reason == "missing_variable" and detail:
        return f"#{{{detail}}} had no value, no fallback and no default"
    if reason == "invalid_header" and detail:
        return f"the rendered header {detail} held a line break"
    return WHY.get(str(reason), str(reason))


@functools.cache
def _views() -> dict[str, string.Template]:
    return {name: string.Template(_resource("templates", f"{name}.html")) for name in TEMPLATES}


@functools.cache
def _new_campaign() -> str:
    return _resource("templates", "new_campaign.yaml")


@functools.cache
def _assets() -> dict[str, tuple[str, str]]:
    return {
        "tripwire.css": (_resource("static", "tripwire.css"), "text/css; charset=utf-8"),
        "dashboard.js": (_resource("static", "dashboard.js"), "text/javascript; charset=utf-8"),
        "favicon.svg": (_resource("static", "favicon.svg"), "image/svg+xml"),
        "login.js": (_resource("static", "login.js"), "text/javascript; charset=utf-8"),
        "builder.js": (_resource("static", "builder.js"), "text/javascript; charset=utf-8"),
    }


# -- login -----------------------------------------------------------------------------------


def _too_many_tries(request: Request) -> Response:
    wait = retry_after(auth.wait_before_trying(request))
    response = _login_form(f"Too many wrong tokens from this address: wait {wait} s.", 429)
    response.headers["Retry-After"] = wait
    return response


def _login_form(message: str | None, status: int) -> Response:
    notice = f'<div class="notice error">{_e(message)}</div>' if message else ""
    return HTMLResponse(_views()["login"].substitute(notice=notice), status_code=status)


async def login(request: Request) -> Response:
    """GET/POST /admin/login: the token in, the cookie out."""
    if not auth.runtime_of(request).settings.admin_token:
        return plain("not found", 404)
    if request.method == "POST":
        given = (await read_form(request)).get("token", "")
    else:
        given = request.query_params.get("token", "")
        if not given:
            return _login_form(None, 200)
    verdict = auth.valid_token(request, given.strip())
    if verdict == "too_many_tries":
        return _too_many_tries(request)
    if verdict != "ok":
        return _login_form("That is not the admin token.", 401)
    token = auth.runtime_of(request).settings.admin_token or ""
    session = await auth.runtime_of(request).sessions.create(auth.token_tag(token))
    response = RedirectResponse("/admin/", status_code=303)
    response.set_cookie(
        auth.COOKIE,
        session,
        max_age=COOKIE_SECONDS,
        path="/admin",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


async def logout(request: Request) -> Response:
    """POST /admin/logout: end the session (its cookie stops working everywhere) and forget it."""
    session = request.cookies.get(auth.COOKIE)
    token = auth.runtime_of(request).settings.admin_token
    if session and token:
        await auth.runtime_of(request).sessions.revoke(session, auth.token_tag(token))
    response = RedirectResponse("/admin/login", status_code=303)
    response.delete_cookie(auth.COOKIE, path="/admin", httponly=True, samesite="strict")
    return response


async def asset(request: Request) -> Response:
    """GET /admin/static/{file}: the dashboard's stylesheet and script."""
    found = _assets().get(request.path_params["file"])
    if found is None:
        return plain("not found", 404)
    text, media_type = found
    return Response(text, media_type=media_type, headers={"Cache-Control": "no-cache"})


async def favicon(_: Request) -> Response:
    """GET /favicon.ico: the dashboard's icon (browsers ask for it on every page)."""
    text, media_type = _assets()["favicon.svg"]
    return Response(text, media_type=media_type, headers={"Cache-Control": "max-age=86400"})


async def to_index(_: Request) -> Response:
    """GET /admin: on to /admin/."""
    return RedirectResponse("/admin/", status_code=307)


# -- campaigns -------------------------------------------------------------------------------


@guarded
async def campaigns(request: Request) -> Response:
    """GET /admin/: the campaigns with their statistics."""
    runtime = auth.runtime_of(request)
    stats = admin.campaign_stats(runtime)
    stopped = await runtime.stopped()
    rows = "".join(
        _campaign_row(c, stats.get(c.id), stopped.get(c.id), c.id in runtime.campaign_changes)
        for c in runtime.config.campaigns
    )
    rows = rows or '<tr><td colspan="6" class="muted">No campaigns yet.</td></tr>'
    shown = "".join(
        [await _charts_html(runtime, c) for c in runtime.config.campaigns if c.goal is not None]
    )
    results = f'<h2 id="results">A/B results</h2>{shown}' if shown else ""
    body = _views()["campaigns"].substitute(rows=rows) + results
    return render_page(request, "Campaigns", body)


async def _charts_html(runtime: Runtime, spec: CampaignSpec) -> str:
    """A campaign's charts: conversion per arm (with a goal), decisions per hour."""
    parts = [f'<div class="card charts" id="charts-{_e(spec.id)}">']
    parts.append(f'<h3><a href="/admin/campaigns/{quote(spec.id)}">{_e(spec.id)}</a></h3>')
    try:
        if spec.goal is not None:
            found = await runtime.results(spec)
            goal = spec.goal
            within = format_duration(goal.window())
            parts.append(
                f'<p class="muted small">Goal: <code>{_e(goal.event)}</code> within '
                f"{_e(within)} of assignment; verdicts once an arm and the control group have "
                f"{found['minimum_sample']} users each.</p>"
            )
            parts.append(charts.conversion_chart(spec.id, found["arms"]))
        hours = await runtime.hourly(spec.id)
    except Unavailable as exc:
        parts.append(f'<div class="notice error">{_e(exc.detail)}</div></div>')
        return "".join(parts)
    parts.append('<p class="muted small">Decisions per hour, last 24 hours:</p>')
    parts.append(charts.hourly_chart(spec.id, hours, ZoneInfo(runtime.config.timezone)))
    parts.append("</div>")
    return "".join(parts)


@guarded
async def set_status(request: Request) -> Response:
    """POST /admin/campaigns/{id}/status: publish, pause, draft or archive."""
    campaign_id = request.path_params["id"]
    status = (await read_form(request)).get("status", "")
    if status not in STATUS_CHOICES:
        return redirect("/admin/", error=f"unknown status {status!r}")
    await admin.set_status(auth.runtime_of(request), campaign_id, status)
    verb = {"published": "Published", "paused": "Paused"}.get(status, f"Set to {status}:")
    return redirect("/admin/", notice=f"{verb} {campaign_id}.")


@guarded
async def editor(request: Request) -> Response:
    """GET /admin/new, /admin/campaigns/{id}: the campaign editor."""
    campaign_id = request.path_params.get("id")
    if campaign_id is None:
        return await _editor_page(request, None, _new_campaign(), [], 200)
    runtime = auth.runtime_of(request)
    spec = admin.find_campaign(runtime, campaign_id)
    version = admin.campaign_etag(spec) or ""
    below = await _charts_html(runtime, spec)
    return await _editor_page(request, spec, _campaign_yaml(spec), [], 200, version, below)


_SAVED_MEANWHILE = (
    "someone else saved this campaign since you opened it: your text is kept below; open the "
    "campaign again to see their change, then redo yours"
)


@guarded
async def save(request: Request) -> Response:
    """POST /admin/campaigns[/{id}]: create or replace a campaign from the editor."""
    runtime = auth.runtime_of(request)
    original = request.path_params.get("id")
    form = await read_form(request)
    source = form.get("source", "")
    version = form.get("version", "")  # the campaign's ETag when the editor was opened
    origin = "form" if form.get("origin") == "form" else "yaml"  # the builder sends JSON
    spec = admin.find_campaign(runtime, original) if original else None
    try:
        raw = admin.parse_campaign_text(source)
        campaign_id = raw.get("id") if isinstance(raw, dict) else None
        if not isinstance(campaign_id, str) or not campaign_id:
            raise InvalidCampaign(["id: required"])
        if original and campaign_id != original:
            problem = f"id: cannot change ({original!r}); create a new campaign instead"
            raise InvalidCampaign([problem])
        if not original and any(c.id == campaign_id for c in runtime.config.campaigns):
            raise InvalidCampaign([f"id: a campaign {campaign_id!r} exists already"])
        async with editing.write_lock(request):
            if spec is not None and version and version != admin.campaign_etag(
                admin.existing_campaign(runtime, spec.id)
            ):
                raise InvalidCampaign([_SAVED_MEANWHILE])
            try:  # checked again where it is written (in Redis mode, another process may save)
                saved, _ = await admin.save_campaign(
                    runtime, campaign_id, raw, if_unchanged=bool(spec and version)
                )
            except PreconditionFailed:
                raise InvalidCampaign([_SAVED_MEANWHILE]) from None
    except InvalidCampaign as exc:
        if origin == "form":
            with contextlib.suppress(InvalidCampaign):
                source = as_yaml(admin.parse_campaign_text(source))
        below = await _charts_html(runtime, spec) if spec is not None else ""
        return await _editor_page(request, spec, source, exc.problems, 400, version, below, origin)
    return redirect("/admin/", notice=f"Saved {saved.id}.")


@guarded
async def delete(request: Request) -> Response:
    """POST /admin/campaigns/{id}/delete."""
    campaign_id = request.path_params["id"]
    if not await auth.runtime_of(request).remove_campaign(campaign_id):
        raise NotFound(f"no campaign {campaign_id!r}")
    return redirect("/admin/", notice=f"Deleted {campaign_id}.")


@guarded
async def fire_test(request: Request) -> Response:
    """POST /admin/campaigns/{id}/test: send the campaign's webhook once, now."""
    campaign_id = request.path_params["id"]
    user = (await read_form(request)).get("user", "").strip() or None
    target = f"/admin/campaigns/{quote(campaign_id)}"
    try:
        attempt = await admin.test_fire(auth.runtime_of(request), campaign_id, user)
    except InvalidCampaign as exc:
        return redirect(target, error="Test not sent: " + "; ".join(exc.problems))
    except NotFound as exc:
        return redirect(target, error=f"Test not sent: {exc.detail}")
    code = attempt.status_code
    outcome = f"HTTP {code}" if code else (attempt.error or attempt.status)
    message = f"Test webhook {attempt.status}: {attempt.method} {attempt.url} → {outcome}"
    kind = "notice" if attempt.status == "delivered" else "error"
    return redirect(target, **{kind: message})


@guarded
async def resume(request: Request) -> Response:
    """POST /admin/campaigns/{id}/resume: deliver again to endpoints paused after 410 Gone."""
    campaign_id = request.path_params["id"]
    endpoint = (await read_form(request)).get("endpoint") or None
    target = f"/admin/campaigns/{quote(campaign_id)}"
    try:
        resumed = admin.resume(auth.runtime_of(request), campaign_id, endpoint)
    except NotFound as exc:
        return redirect(target, error=f"Nothing resumed: {exc.detail}")
    plural = "s" if resumed != 1 else ""
    return redirect(target, notice=f"Resumed {resumed} endpoint{plural} of {campaign_id}.")


async def _editor_page(
    request: Request,
    spec: CampaignSpec | None,
    source: str,
    problems: list[str],
    status: int,
    version: str = "",
    below: str = "",
    origin: str = "yaml",
) -> Response:
    """The campaign page: results (an existing campaign opens on them), the form, the YAML."""
    runtime = auth.runtime_of(request)
    action = f"/admin/campaigns/{quote(spec.id)}" if spec else "/admin/campaigns"
    title = f"Campaign {spec.name or spec.id}" if spec else "New campaign"
    errors = ""
    if problems:
        items = "".join(f"<li>{_e(p)}</li>" for p in problems)
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        errors = (
            f'<div class="notice error" id="problems" role="alert"><strong>Not saved: '
            f'{count}</strong><ul class="problems">{items}</ul></div>'
        )
    results = ""
    if spec is not None:
        stats = _stats_html(admin.campaign_stats(runtime).get(spec.id))
        paused = [p for p in runtime.deliveries.paused() if p.campaign_id == spec.id]
        side = _paused_html(action, paused) + _views()["editor_side"].substitute(
            action=action, stats=stats, id=_e(spec.id), deliveries=quote(spec.id)
        )
        results = (
            '<section id="panel-results" role="tabpanel" aria-labelledby="tab-results" '
            f'tabindex="-1"><div class="grid2"><div>{below}</div><div>{side}</div></div></section>'
        )
    try:
        document = admin.parse_campaign_text(source)
    except InvalidCampaign:
        document = {}
    opening = "results" if spec is not None and not problems else origin
    if spec is None and not problems:
        opening = "form"
    form = await builder.campaign_form(runtime, document, problems, spec is None, origin)
    body = _views()["editor"].substitute(
        title=_e(title), errors=errors, action=action, source=_e(source), results=results,
        version=_e(version), form=form, opening=opening,
        results_tab=(
            '<button type="button" role="tab" id="tab-results" aria-controls="panel-results">'
            "Results</button>" if spec is not None else ""
        ),
    )
    return render_page(request, title, body, status)


# -- events, deliveries, users ---------------------------------------------------------------


@guarded
async def events(request: Request) -> Response:
    """GET /admin/events: the live events page."""
    return render_page(request, "Live events", _views()["events"].substitute())


@guarded
async def deliveries(request: Request) -> Response:
    """GET /admin/deliveries: the delivery log, filtered."""
    runtime = auth.runtime_of(request)
    query = request.query_params
    campaign = query.get("campaign") or None
    status = query.get("status") or None
    if status not in STATUSES:
        status = None
    found = await runtime.deliveries.log(campaign=campaign, status=status, limit=200)
    filters = {"campaign": campaign or "", "status": status or ""}
    here = "/admin/deliveries?" + urlencode(filters)
    # Replay is offered for dead letters only: a test-fire that failed was never queued
    dead = {letter.delivery_id for letter in await runtime.deliveries.dead_letters(campaign)}
    rows = "".join(_delivery_row(d, here, d.delivery_id in dead) for d in found)
    rows = rows or '<tr><td colspan="7" class="muted">No deliveries match.</td></tr>'
    body = _views()["deliveries"].substitute(
        here=_e(here),
        rows=rows,
        campaign_options=_options(
            [c.id for c in runtime.config.campaigns], campaign, "all campaigns"
        ),
        status_options=_options(list(STATUSES), status, "any status"),
    )
    return render_page(request, "Deliveries", body)


@guarded
async def replay(request: Request) -> Response:
    """POST /admin/deliveries/{id}/replay: send a dead letter again."""
    delivery_id = request.path_params["id"]
    back = (await read_form(request)).get("back") or "/admin/deliveries"
    if not back.startswith("/admin/"):
        back = "/admin/deliveries"
    try:
        answer = await replay_dead_letter(auth.runtime_of(request), delivery_id)
    except NotFound:
        return redirect(back, error=f"{delivery_id} is not a dead letter: nothing to replay.")
    return redirect(back, notice=f"Replaying {delivery_id}, {answer.reason}.")


@guarded
async def users(request: Request) -> Response:
    """GET /admin/users[?id=]: look a user up, or pick one seen lately."""
    runtime = auth.runtime_of(request)
    identity = (request.query_params.get("id") or "").strip()
    result, status, title = "", 200, "User lookup"
    if identity:
        view = await runtime.users.lookup(identity, time.time())
        if view is None:
            result = f'<div class="notice error">No user {_e(identity)} is known.</div>'
            status = 404
        else:
            title = f"User {identity}"
            result = _user_html(_views()["user"], view.key, view.profile, view.recent_events)
    if not identity:
        result = _recent_users(runtime.events.recent)
    body = _views()["users"].substitute(identity=_e(identity), result=result)
    return render_page(request, title, body, status)


# -- fragments -------------------------------------------------------------------------------


def _campaign_row(
    spec: CampaignSpec,
    stats: dict[str, Any] | None,
    stopped: str | None = None,
    edited: bool = False,
) -> str:
    href = f"/admin/campaigns/{quote(spec.id)}"
    published = spec.status == "published"
    toggle_to, label = ("paused", "Pause") if published else ("published", "Publish")
    toggle = (
        f'<form class="inline" method="post" action="{href}/status">'
        f'<input type="hidden" name="status" value="{toggle_to}">'
        f'<button type="submit" class="toggle">{label}</button></form>'
    )
    flags = []
    if spec.test_mode:
        flags.append('<span class="badge">test mode</span>')
    if spec.variants:
        flags.append(f'<span class="badge">A/B · {len(spec.variants)} variants</span>')
    if spec.exclusive:
        flags.append('<span class="badge">exclusive</span>')
    if edited:
        flags.append(
            '<span class="badge edited" title="changed here or through the admin API: this '
            'version wins over the config file at every start">edited here</span>'
        )
    fired = stats["fired"] if stats else 0
    status = f'<span class="badge status {spec.status}">{spec.status}</span>'
    if stopped is not None:
        status += f' <span class="badge stopped" title="{_e(WHY.get(stopped, ""))}">'
        status += f"stopped: {_e(stopped)}</span>"
    return (
        f'<tr data-campaign="{_e(spec.id)}">'
        f'<td><a href="{href}"><strong>{_e(spec.name or spec.id)}</strong></a>'
        f'<div class="muted small"><code>{_e(spec.id)}</code> {" ".join(flags)}</div></td>'
        f"<td>{status}</td>"
        f'<td class="small">{_e(_trigger_text(spec))}</td>'
        f'<td class="num fired">{fired}</td>'
        f'<td class="reasons">{_reasons_html(stats)}</td>'
        f'<td class="actions">{toggle}<a href="{href}">Edit</a></td></tr>'
    )


def _paused_html(action: str, paused: list[PausedEndpoint]) -> str:
    """A warning card listing the campaign's paused endpoints, each with a Resume button."""
    if not paused:
        return ""
    items = "".join(
        f'<li data-endpoint="{_e(p.endpoint)}"><code>{_e(p.endpoint)}</code> '
        f'<span class="small muted">since {_clock(p.since)}: {_e(p.reason)}</span>'
        f'<form class="inline" method="post" action="{action}/resume">'
        f'<input type="hidden" name="endpoint" value="{_e(p.endpoint)}">'
        f'<button type="submit">Resume</button></form></li>'
        for p in paused
    )
    return (
        '<div class="card" id="paused"><h2>Paused endpoints</h2>'
        '<p class="notice error">These endpoints answered 410 Gone: this campaign\'s webhooks '
        "to them are dead-lettered until you resume them.</p>"
        f'<ul class="problems">{items}</ul></div>'
    )


def _trigger_text(spec: CampaignSpec) -> str:
    trigger = spec.trigger
    if trigger is None:
        return "every page view"
    if trigger.segment_entered:
        return f"enters segment {trigger.segment_entered}"
    if trigger.after is not None:
        unless = f" without {trigger.unless.event}" if trigger.unless is not None else ""
        return f"{trigger.wait or 0:g} s after {trigger.after}{unless}"
    return f"{trigger.event}{' (filtered)' if trigger.where is not None else ''}"


def _reasons_html(stats: dict[str, Any] | None) -> str:
    """Suppressions by reason; events that did not match the trigger apart, as they are not
    deliveries held back but events the campaign is not about."""
    counted: dict[str, int] = stats["suppressed"] if stats else {}
    missed = counted.get("trigger", 0)
    suppressed = {reason: n for reason, n in counted.items() if reason != "trigger"}
    shown = "".join(
        f'<span class="badge suppressed" title="{_e(WHY.get(reason, reason))}">'
        f"{_e(reason)} {count}</span>"
        for reason, count in sorted(suppressed.items(), key=lambda item: -item[1])
    ) or '<span class="muted">—</span>'
    if missed:
        shown += (
            f'<div class="small muted trigger-misses" title="{_e(WHY["trigger"])}">'
            f"not triggered: {missed} {'event' if missed == 1 else 'events'}</div>"
        )
    return shown


def _stats_html(stats: dict[str, Any] | None) -> str:
    fired = stats["fired"] if stats else 0
    return (
        f'<dl class="kv"><dt>Fired</dt><dd>{fired}</dd><dt>Suppressed</dt>'
        f'<dd class="reasons">{_reasons_html(stats)}</dd></dl>'
    )


def _delivery_row(entry: DeliveryAttempt, here: str, dead_letter: bool) -> str:
    latency = f"{entry.latency_ms:.0f} ms" if entry.latency_ms is not None else "—"
    code = f"HTTP {entry.status_code}" if entry.status_code is not None else ""
    response = _e(code)
    if entry.response:
        summary = _e(code or "body")
        response = f"<details><summary>{summary}</summary><pre>{_e(entry.response)}</pre></details>"
    if entry.error:
        response += f'<div class="small muted">{_e(entry.error)}</div>'
    replay = ""
    if dead_letter and entry.status in REPLAYABLE:
        action = f"/admin/deliveries/{quote(entry.delivery_id)}/replay"
        replay = (
            f'<form class="inline" method="post" action="{action}">'
            f'<input type="hidden" name="back" value="{_e(here)}">'
            f'<button type="submit">Replay</button></form>'
        )
    variant = f' <span class="muted">/ {_e(entry.variant_id)}</span>' if entry.variant_id else ""
    return (
        f'<tr data-delivery="{_e(entry.delivery_id)}"><td class="small">{_clock(entry.at)}</td>'
        f"<td>{_e(entry.campaign_id)}{variant}"
        f'<div class="small muted">{_e(entry.user_key)}</div></td>'
        f'<td class="small"><span class="method">{_e(entry.method)}</span> '
        f"<code>{_e(entry.url)}</code><div class=muted>attempt {entry.attempt} · "
        f"<code>{_e(entry.delivery_id)}</code></div></td>"
        f'<td><span class="badge {entry.status}">{entry.status}</span></td>'
        f'<td class="num">{latency}</td><td class="small">{response}</td><td>{replay}</td></tr>'
    )


def _user_html(
    template: string.Template, key: str, profile: dict[str, Any], recent: list[dict[str, Any]]
) -> str:
    decisions: dict[str, dict[str, Any]] = profile.get("decisions") or {}
    histories: dict[str, list[dict[str, Any]]] = profile.get("decision_history") or {}
    stopped: dict[str, str] = profile.get("stopped") or {}
    rows = []
    for campaign_id, latest in sorted(decisions.items()):
        earlier = (histories.get(campaign_id) or [latest])[1:]
        for position, decision in enumerate([latest, *earlier]):
            outcome = str(decision.get("outcome", ""))
            reason = decision.get("reason")
            why = "it fired" if outcome == "fired" else _why(reason, decision.get("detail"))
            variant = decision.get("variant_id")
            if position == 0:
                opening = f'<tr data-campaign="{_e(campaign_id)}">'
                name = (
                    f'<a href="/admin/campaigns/{quote(campaign_id)}">{_e(campaign_id)}</a>'
                    f"{f' / {_e(variant)}' if variant else ''}"
                    f"{_stopped_badge(stopped.get(campaign_id))}"
                )
            else:
                opening = f'<tr class="earlier" data-earlier="{_e(campaign_id)}">'
                name = f'<span class="muted small">earlier{f" / {_e(variant)}" if variant else ""}'
                name += "</span>"
            rows.append(
                f"{opening}<td>{name}</td>"
                f'<td><span class="badge {_e(outcome)}">{_e(outcome)}</span></td>'
                f'<td><code>{_e(reason or "")}</code></td><td class="why">{_e(why)}</td>'
                f'<td class="small">{_clock(decision.get("at"))}</td></tr>'
            )
    shown = {"decisions", "decision_history", "traits", "variables", "segments", "key", "session"}
    segments = "".join(f'<span class="badge">{_e(s)}</span> ' for s in profile.get("segments", []))
    events = "".join(_event_row(m) for m in reversed(recent))
    return template.substitute(
        decisions="".join(rows) or '<tr><td colspan="5" class="muted">No decisions yet.</td></tr>',
        key=_e(key),
        facts=_kv(_facts(profile, shown)),
        segments=segments or '<span class="muted">none</span>',
        traits=_kv(profile.get("traits") or {}),
        variables=_kv(profile.get("variables") or {}),
        events=events or '<tr><td colspan="4" class="muted">No recent events.</td></tr>',
    )


def _facts(profile: dict[str, Any], shown: set[str]) -> dict[str, Any]:
    """The profile's other fields, with times and the session made readable."""
    facts = {k: v for k, v in profile.items() if k not in shown}
    for name in ("first_seen", "last_seen"):
        if name in facts:
            facts[name] = _clock(facts[name])
    session = profile.get("session")
    if isinstance(session, dict):
        state = "active" if session.get("active") else "ended"
        started = _clock(session.get("start"))
        facts["session"] = f"#{session.get('number')} since {started} ({state})"
    timers = profile.get("timers")
    if isinstance(timers, list):
        facts["pending timers"] = "; ".join(
            f"{t['campaign_id']} due {_clock(t['due'])}" for t in timers
        ) or "none"
        facts.pop("timers", None)
    spacing = profile.get("spacing")
    if isinstance(spacing, dict):
        facts["spacing"] = (
            f"last spaced campaign {_clock(spacing['last_fired_at'])}, "
            f"{spacing['page_views_since']} page views since"
        )
    stopped = profile.get("stopped")
    if isinstance(stopped, dict):
        facts["stopped"] = ", ".join(f"{c} (stopped: {r})" for c, r in stopped.items()) or "none"
    counts = profile.get("event_counts")
    if isinstance(counts, dict):
        facts["event counts"] = ", ".join(f"{name} {n}" for name, n in counts.items()) or "none"
        facts.pop("event_counts", None)
    caps = profile.get("caps")
    if isinstance(caps, dict):
        facts["deliveries"] = "; ".join(_caps_text(cid, c) for cid, c in caps.items()) or "none"
        facts.pop("caps", None)
    goals = profile.get("goals")
    if isinstance(goals, dict):
        facts["goals"] = "; ".join(
            f"{cid}: arm {g['arm']} since {_clock(g['assigned_at'])}, "
            f"{'converted' if g['converted'] else 'not converted yet'}"
            for cid, g in goals.items()
        ) or "none"
    return facts


def _caps_text(campaign_id: str, caps: dict[str, int]) -> str:
    """A campaign's deliveries to the user, as frequency caps count them, in words."""
    text = f"{campaign_id}: {caps['total']} in all"
    if caps["session"] >= 0:
        text += f", {caps['in_session']} in session #{caps['session']}"
    return text + f", {caps['in_day']} on the last day it fired"


def _stopped_badge(reason: str | None) -> str:
    if reason is None:
        return ""
    return f' <span class="badge stopped">stopped: {_e(reason)}</span>'


def _recent_users(events: Iterable[Event]) -> str:
    """Links to the users behind the latest events, newest first."""
    seen: dict[str, str] = {}
    for event in reversed(list(events)):
        identity = event.user_id or event.anonymous_id
        if identity and identity not in seen:
            seen[identity] = event.user_id or f"visitor {identity[:8]}…"
    if not seen:
        return ""
    links = "".join(
        f'<a class="badge" href="/admin/users?id={quote(identity)}">{_e(label)}</a> '
        for identity, label in list(seen.items())[:20]
    )
    return f'<div class="card"><h2>Recently seen</h2><p class="reasons">{links}</p></div>'


def _event_row(message: dict[str, Any]) -> str:
    page = (message.get("context") or {}).get("page") or {}
    name = message.get("event") or message.get("name") or ""
    return (
        f'<tr><td class="small">{_clock(message.get("timestamp"))}</td>'
        f'<td>{_e(message.get("type"))}</td><td>{_e(name)}</td>'
        f"<td><code>{_e(page.get('path', ''))}</code></td></tr>"
    )


def _kv(values: dict[str, Any]) -> str:
    if not values:
        return '<p class="muted">none</p>'
    items = "".join(
        f"<dt>{_e(k)}</dt><dd>{_e(_show(v))}</dd>" for k, v in sorted(values.items())
    )
    return f'<dl class="kv">{items}</dl>'


def _show(value: Any) -> str:
    if isinstance(value, str):
        return value
    return msgspec.json.encode(value, enc_hook=str).decode()


def _options(values: list[str], selected: str | None, blank: str) -> str:
    options = [f'<option value="">{_e(blank)}</option>']
    for value in values:
        chosen = " selected" if value == selected else ""
        options.append(f'<option value="{_e(value)}"{chosen}>{_e(value)}</option>')
    return "".join(options)


def _campaign_yaml(spec: CampaignSpec) -> str:
    data = campaign_as_written(spec)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=96)


def _clock(at: Any) -> str:
    if not isinstance(at, int | float) or not at:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def _e(text: Any) -> str:
    return html.escape("" if text is None else str(text), quote=True)


def _resource(folder: str, name: str) -> str:
    return (resources.files("collector.admin") / folder / name).read_text(encoding="utf-8")
