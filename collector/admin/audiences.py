"""Admin API for the campaign builder: variables and segments, reach, dry runs, pickers.

    GET    /admin/api/variables            every variable (`{"variables": {name: spec}}`)
    GET    /admin/api/variables/{name}     one, with its ETag
    PUT    /admin/api/variables/{name}     create or replace (YAML or JSON; If-Match honoured)
    DELETE /admin/api/variables/{name}     409 while a campaign, segment or variable uses it
    ...and the same under /admin/api/segments (the body is the segment's condition)
    GET    /admin/api/segments/{name}/reach    users matching the segment now
    POST   /admin/api/reach                {"condition"?, "target"?, "test_mode"?}: a draft's
    POST   /admin/api/campaigns/{id}/dry-run   {"user", "properties"?, "campaign"?}
    GET    /admin/api/vocabulary           what the pickers offer
    POST   /admin/api/campaign-text        {"yaml": text} -> {"campaign"}; {"campaign"} -> {"yaml"}

Writes go through `collector.definitions` (validated like the config file, kept, shared) under
the same lock and preconditions as campaign edits.
"""

from __future__ import annotations

from typing import Any

import msgspec
import yaml
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from collector.admin import api as campaigns_api
from collector.admin import auth, editing, reach
from collector.admin.dryrun import dry_run
from collector.admin.vocabulary import vocabulary as picker_vocabulary
from collector.config.schema import CampaignSpec, encode_hook
from collector.config.settings import decode_campaign
from collector.definitions import KINDS, Kind
from collector.errors import BadRequest, ConfigError, InvalidCampaign, NotFound
from collector.runtime import Runtime

_NOUN = {"variables": "variable", "segments": "segment"}


def definition_etag(raw: Any) -> str:
    """The ETag of a variable or segment as written."""
    return editing.etag({"definition": raw})


def _kind(request: Request) -> Kind:
    kind = request.url.path.removeprefix("/admin/api/").split("/", 1)[0]
    assert kind in KINDS
    return kind


async def save_definition(
    runtime: Runtime, kind: Kind, name: str, raw: Any, version: str | None = None
) -> bool:
    """Validate and apply a variable or segment; True when new. Raises InvalidCampaign with
    every problem (paths like `variables.NAME.stat`), PreconditionFailed is the caller's."""
    try:
        return await runtime.definitions.put(kind, name, raw)
    except ConfigError as exc:
        raise InvalidCampaign(exc.problems) from exc


@campaigns_api.guarded
async def list_definitions(request: Request) -> Response:
    """GET /admin/api/variables | /admin/api/segments: every one, as written."""
    kind = _kind(request)
    return JSONResponse({kind: auth.runtime_of(request).definitions.all(kind)})


@campaigns_api.guarded
async def get_definition(request: Request) -> Response:
    """GET /admin/api/{variables|segments}/{name}: one, with its ETag."""
    kind = _kind(request)
    name = request.path_params["name"]
    raw = auth.runtime_of(request).definitions.get(kind, name)
    if raw is None:
        raise NotFound(f"no {_NOUN[kind]} {name!r}")
    return JSONResponse(raw, headers={"ETag": definition_etag(raw)})


@campaigns_api.guarded
async def put_definition(request: Request) -> Response:
    """PUT /admin/api/{variables|segments}/{name}: create or replace (YAML or JSON)."""
    kind = _kind(request)
    name = request.path_params["name"]
    runtime = auth.runtime_of(request)
    raw = campaigns_api.parse_campaign_text((await request.body()).decode("utf-8", "replace"))
    async with editing.write_lock(request):
        current = runtime.definitions.get(kind, name)
        editing.check_preconditions(
            request, None if current is None else definition_etag(current)
        )
        created = await save_definition(runtime, kind, name, raw)
    saved = runtime.definitions.get(kind, name)
    return JSONResponse(saved, status_code=201 if created else 200,
                        headers={"ETag": definition_etag(saved)})


@campaigns_api.guarded
async def delete_definition(request: Request) -> Response:
    """DELETE /admin/api/{variables|segments}/{name}: refused (409) while something uses it."""
    kind = _kind(request)
    name = request.path_params["name"]
    runtime = auth.runtime_of(request)
    async with editing.write_lock(request):
        current = runtime.definitions.get(kind, name)
        if current is None:
            raise NotFound(f"no {_NOUN[kind]} {name!r}")
        editing.check_preconditions(request, definition_etag(current))
        await runtime.definitions.remove(kind, name)
    return Response(status_code=204)


@campaigns_api.guarded
async def segment_reach(request: Request) -> Response:
    """GET /admin/api/segments/{name}/reach: how many known users are in it now."""
    runtime = auth.runtime_of(request)
    name = request.path_params["name"]
    if name not in runtime.config.segments:
        raise NotFound(f"no segment {name!r}")
    match = reach.matcher(runtime, target={"segments": [name]})
    return JSONResponse(await reach.count(runtime, match))


@campaigns_api.guarded
async def draft_reach(request: Request) -> Response:
    """POST /admin/api/reach: users matching a draft condition and/or campaign target now."""
    options = await _mapping(request)
    runtime = auth.runtime_of(request)
    try:
        match = reach.matcher(
            runtime, condition=options.get("condition"), target=options.get("target"),
            test_mode=bool(options.get("test_mode")),
        )
    except ConfigError as exc:
        raise InvalidCampaign(exc.problems) from exc
    return JSONResponse(await reach.count(runtime, match))


@campaigns_api.guarded
async def campaign_dry_run(request: Request) -> Response:
    """POST /admin/api/campaigns/{id}/dry-run: would it fire for this user now, and how?"""
    options = await _mapping(request)
    runtime = auth.runtime_of(request)
    campaign_id = request.path_params["id"]
    user = options.get("user")
    if not isinstance(user, str) or not user.strip():
        raise BadRequest("$.user: expected a user id, anonymous id or profile key")
    properties = options.get("properties")
    if properties is not None and not isinstance(properties, dict):
        raise BadRequest("$.properties: expected an object of event properties")
    spec = draft_campaign(runtime, campaign_id, options.get("campaign"))
    return JSONResponse(await dry_run(runtime, spec, user.strip(), properties))


def draft_campaign(runtime: Runtime, campaign_id: str, raw: Any) -> CampaignSpec:
    """The saved campaign, or a draft of it validated like a save (not applied)."""
    if raw is None:
        return campaigns_api.find_campaign(runtime, campaign_id)
    if not isinstance(raw, dict):
        raise InvalidCampaign(["campaign: expected a campaign mapping"])
    raw = {**editing.writable(raw), "id": campaign_id}
    try:
        return decode_campaign(
            raw, runtime.config, verify=lambda c: runtime.engine.rules.with_campaign(c, 0.0)
        )
    except ConfigError as exc:
        raise InvalidCampaign(exc.problems) from exc


@campaigns_api.guarded
async def vocabulary(request: Request) -> Response:
    """GET /admin/api/vocabulary: the names and operators the builder's pickers offer."""
    return JSONResponse(await picker_vocabulary(auth.runtime_of(request)))


@campaigns_api.guarded
async def campaign_text(request: Request) -> Response:
    """POST /admin/api/campaign-text: YAML to a campaign document, or a document to YAML."""
    options = await _mapping(request)
    if "yaml" in options:
        text = options["yaml"]
        if not isinstance(text, str):
            raise BadRequest("$.yaml: expected text")
        parsed = campaigns_api.parse_campaign_text(text)
        if not isinstance(parsed, dict):
            raise InvalidCampaign(["$: expected a campaign mapping"])
        return JSONResponse({"campaign": msgspec.to_builtins(parsed, enc_hook=str)})
    document = options.get("campaign")
    if not isinstance(document, dict):
        raise BadRequest("$: send {\"yaml\": text} or {\"campaign\": document}")
    return JSONResponse({"yaml": as_yaml(document)})


def as_yaml(document: Any) -> str:
    """A document as the editor's YAML."""
    return yaml.safe_dump(msgspec.to_builtins(document, enc_hook=encode_hook),
                          sort_keys=False, allow_unicode=True, width=96)


async def _mapping(request: Request) -> dict[str, Any]:
    body = await request.body()
    if not body.strip():
        return {}
    parsed = campaigns_api.parse_campaign_text(body.decode("utf-8", "replace"))
    if not isinstance(parsed, dict):
        raise BadRequest("$: expected a JSON object")
    return parsed
