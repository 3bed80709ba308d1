"""The dashboard's builders: the campaign form, and the variable and segment pages.

Pages are rendered here; `static/builder.js` (this origin's script, no build step) turns the
data they embed (`<script type="application/json">`, never executed, so the CSP holds) into the
form, its pickers and condition builder, and back into the document that is saved. A campaign
built in the form is saved through the same form post as the YAML editor (`dashboard.save`):
the same validation, version check and durability. Variables and segments are saved through
`collector.definitions`, like the admin API's PUT.
"""

from __future__ import annotations

import functools
import html
import string
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson
from starlette.requests import Request
from starlette.responses import Response

from collector.admin import auth, editing
from collector.admin.api import parse_campaign_text
from collector.admin.audiences import definition_etag, save_definition
from collector.admin.pages import guarded, read_form, redirect, render_page
from collector.admin.vocabulary import OPERATOR_LABELS, vocabulary
from collector.definitions import KINDS, NAME, Kind, users_of
from collector.errors import Conflict, InvalidCampaign, NotFound

if TYPE_CHECKING:
    from collector.runtime import Runtime

NOUN = {"variables": "variable", "segments": "segment"}
TITLE = {"variables": "Variables", "segments": "Segments"}


@functools.cache
def _template(name: str) -> string.Template:
    text = (resources.files("collector.admin") / "templates" / f"{name}.html").read_text("utf-8")
    return string.Template(text)


def data_block(element_id: str, data: Any) -> str:
    """Data for the page's script, as JSON no markup can break out of."""
    text = orjson.dumps(data).decode().replace("<", "\\u003c").replace(">", "\\u003e")
    return f'<script type="application/json" id="{element_id}">{text}</script>'


async def campaign_form(
    runtime: Runtime, document: Any, problems: list[str], new: bool, origin: str
) -> str:
    """The campaign form (filled in by the script from the document it embeds)."""
    data = {
        "campaign": document if isinstance(document, dict) else {},
        "problems": problems,
        "new": new,
        "origin": origin,
        "vocabulary": await vocabulary(runtime),
    }
    return _template("campaign_form").substitute(data=data_block("builder-data", data))


# -- variables and segments pages -------------------------------------------------------------


def _kind_of(request: Request) -> Kind:
    kind = request.url.path.removeprefix("/admin/").split("/", 1)[0]
    assert kind in KINDS
    return kind


def _render(request: Request, title: str, body: str, status: int = 200) -> Response:
    return render_page(request, title, body, status)


async def definitions_page(request: Request) -> Response:
    """GET /admin/variables | /admin/segments: the list, with what uses each."""
    kind = _kind_of(request)
    runtime = auth.runtime_of(request)
    items = runtime.definitions.all(kind)
    rows = []
    for name, raw in items.items():
        users = users_of(runtime.config, kind, name)
        edited = (' <span class="badge edited">edited here</span>'
                  if runtime.definitions.edited(kind, name) else "")
        reach = ""
        if kind == "segments":
            reach = (f'<button type="button" class="reach-button" data-segment="{_e(name)}">'
                     f'Reach</button> <output class="reach small muted"></output>')
        summary = _summary(kind, raw)
        rows.append(
            f'<tr data-name="{_e(name)}"><td><a href="/admin/{kind}/{quote(name)}">'
            f"<strong>{_e(name)}</strong></a>{edited}"
            f'<div class="small muted">{_e(summary)}</div></td>'
            f'<td class="small">{_e(", ".join(users)) or "—"}</td><td>{reach}</td></tr>'
        )
    empty = f'<tr><td colspan="3" class="muted">No {kind} yet.</td></tr>'
    body = _template("definitions").substitute(
        title=TITLE[kind], kind=kind, noun=NOUN[kind], rows="".join(rows) or empty,
        third="Reach" if kind == "segments" else "",
    )
    return _render(request, TITLE[kind], body)


def _summary(kind: Kind, raw: Any) -> str:
    if kind == "variables" and isinstance(raw, dict):
        event = raw.get("event")
        events = " or ".join(event) if isinstance(event, list) else str(event)
        field = f" of {raw['field']}" if raw.get("field") else ""
        where = f" where {describe(raw['where'])}" if raw.get("where") else ""
        return f"{raw.get('stat')}{field}, {events} events{where}, over {raw.get('window', 'all')}"
    return describe(raw)


_OPERAND = {"trait": "{}", "var": "{}", "prop": "property {}", "context": "{}",
            "event_count": "times {} happened", "segment": "in segment {}"}


def describe(raw: Any) -> str:
    """A condition in words: `plan is pro and pricing_views_7d ≥ 2`."""
    if not isinstance(raw, dict) or not raw:
        return orjson.dumps(raw).decode()
    for key, joiner in (("all", " and "), ("any", " or ")):
        if isinstance(raw.get(key), list):
            parts = [describe(item) for item in raw[key]]
            text = joiner.join(f"({p})" if " and " in p or " or " in p else p for p in parts)
            return text
    if "not" in raw:
        return f"not ({describe(raw['not'])})"
    kind = next((k for k in _OPERAND if k in raw), None)
    if kind is None:
        return orjson.dumps(raw).decode()
    operand = _OPERAND[kind].format(raw[kind])
    if kind == "event_count" and raw.get("window"):
        operand += f" in {raw['window']}"
    op = next((k for k in OPERATOR_LABELS if k in raw), None)
    if op is None:
        return operand
    value = raw[op]
    shown = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
    if op == "exists":
        return f"{operand} {'exists' if value else 'does not exist'}"
    return f"{operand} {OPERATOR_LABELS[op]} {shown}"


async def definition_page(request: Request) -> Response:
    """GET /admin/{variables|segments}/new | /{name}: the builder form."""
    kind = _kind_of(request)
    name = request.path_params.get("name")
    runtime = auth.runtime_of(request)
    raw: Any = None
    if name is not None:
        raw = runtime.definitions.get(kind, name)
        if raw is None:
            raise NotFound(f"no {NOUN[kind]} {name!r}")
    version = definition_etag(raw) if raw is not None else ""
    return await _definition_form(request, kind, name, raw, [], version, 200)


async def _definition_form(
    request: Request, kind: Kind, name: str | None, raw: Any, problems: list[str],
    version: str, status: int, typed_name: str = "",
) -> Response:
    runtime = auth.runtime_of(request)
    noun = NOUN[kind]
    title = f"{noun.capitalize()} {name}" if name else f"New {noun}"
    action = f"/admin/{kind}/{quote(name)}" if name else f"/admin/{kind}"
    errors = ""
    if problems:
        items = "".join(f"<li>{_e(p)}</li>" for p in problems)
        errors = (f'<div class="notice error" id="problems" role="alert"><strong>Not saved: '
                  f"{len(problems)} problem{'s' if len(problems) != 1 else ''}</strong>"
                  f'<ul class="problems">{items}</ul></div>')
    data = {"kind": kind, "name": name or typed_name, "new": name is None,
            "definition": raw, "problems": problems,
            "vocabulary": await vocabulary(runtime)}
    delete = ""
    if name:
        delete = (f'<form method="post" action="{action}/delete" class="card" '
                  f'data-confirm="Delete {noun} {_e(name)}?"><h2>Delete</h2>'
                  f'<button class="danger" type="submit">Delete this {noun}</button></form>')
    text = orjson.dumps(raw, option=orjson.OPT_INDENT_2).decode() if raw is not None else ""
    body = _template("definition_form").substitute(
        title=_e(title), errors=errors, action=action, version=_e(version), kind=kind,
        noun=noun, source=_e(text), data=data_block("definition-data", data), delete=delete,
    )
    return _render(request, title, body, status)


async def save_definition_form(request: Request) -> Response:
    """POST /admin/{variables|segments}[/{name}]: save from the builder form."""
    kind = _kind_of(request)
    runtime = auth.runtime_of(request)
    original = request.path_params.get("name")
    form = await read_form(request)
    name = original or form.get("name", "").strip()
    version = form.get("version", "")
    source = form.get("definition", "")
    raw: Any = None
    try:
        if not NAME.match(name):
            raise InvalidCampaign([f"{kind}.name: a name is letters, digits and _ . : - "
                                   "starting with a letter or _"])
        if not original and name in getattr(runtime.config, kind):
            raise InvalidCampaign([f"{kind}.{name}: a {NOUN[kind]} {name!r} exists already"])
        raw = parse_campaign_text(source)
        async with editing.write_lock(request):
            current = runtime.definitions.get(kind, name)
            if original and version and (current is None or version != definition_etag(current)):
                raise InvalidCampaign([
                    "someone else saved this since you opened it: open it again to see their "
                    "change, then redo yours"
                ])
            await save_definition(runtime, kind, name, raw)
    except InvalidCampaign as exc:
        return await _definition_form(request, kind, original, raw, exc.problems, version, 400,
                                      typed_name=name)
    return redirect(f"/admin/{kind}", notice=f"Saved {NOUN[kind]} {name}.")


async def delete_definition_form(request: Request) -> Response:
    """POST /admin/{variables|segments}/{name}/delete: refused while something uses it."""
    kind = _kind_of(request)
    name = request.path_params["name"]
    runtime = auth.runtime_of(request)
    try:
        async with editing.write_lock(request):
            removed = await runtime.definitions.remove(kind, name)
    except Conflict as exc:
        return redirect(f"/admin/{kind}/{quote(name)}", error=f"Not deleted: {exc.detail}")
    if not removed:
        raise NotFound(f"no {NOUN[kind]} {name!r}")
    return redirect(f"/admin/{kind}", notice=f"Deleted {NOUN[kind]} {name}.")


def _e(text: Any) -> str:
    return html.escape("" if text is None else str(text), quote=True)


# the pages, as `collector.app` routes them (for /admin/variables... and /admin/segments...)
list_page = guarded(definitions_page)
form_page = guarded(definition_page)
save_page = guarded(save_definition_form)
delete_page = guarded(delete_definition_form)
