"""The admin API described as an OpenAPI 3.1 document, served at `GET /admin/api/openapi.json`.

Schemas come from the msgspec types the API decodes and encodes (`CampaignSpec`,
`DeliveryAttempt`, ...), through `msgspec.json.schema_components`; the config's own string and
number types get their schema from `_schema_hook`. The operations are listed here, by path and
method; a test checks that they are exactly the admin routes the app serves.
"""

from __future__ import annotations

from functools import cache
from typing import Any, get_args

import msgspec

from collector import __version__
from collector.admin.replay import ReplayAnswer
from collector.config.durations import Duration
from collector.config.schema import (
    CampaignSpec,
    ConditionTree,
    Hours,
    Stat,
    TimezoneName,
    Window,
)
from collector.delivery.dispatcher import PausedEndpoint
from collector.delivery.log import STATUSES, DeliveryAttempt
from collector.engine.results import ArmResult

REF = "#/components/schemas/{name}"
READ_ONLY = ("stats", "stopped")  # in a campaign's representation, ignored on write


def _schema_hook(kind: type) -> dict[str, Any]:
    """JSON schemas for the config's own types."""
    if issubclass(kind, Duration):
        return {"anyOf": [
            {"type": "number", "minimum": 0, "description": "seconds"},
            {"type": "string", "pattern": r"^\d+(\.\d+)?(ms|s|m|h|d)?$", "examples": ["30m"]},
        ]}
    if issubclass(kind, Window):
        return {"type": "string", "examples": ["all", "session", "today", "7d", "12h"]}
    if issubclass(kind, Hours):
        return {"type": "string", "pattern": r"^\d\d:\d\d-\d\d:\d\d$", "examples": ["09:00-18:00"]}
    if issubclass(kind, TimezoneName):
        return {"type": "string", "examples": ["Asia/Tokyo"]}
    if issubclass(kind, ConditionTree):
        return {"type": "object", "description": "a condition: {all: […]}, {any: […]}, "
                "{not: …}, or a leaf such as {var: NAME, gte: 2}"}
    raise NotImplementedError(f"no JSON schema for {kind!r}")


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": REF.format(name=name)}


_ERROR = _json(_ref("Error"), "an error: `detail` names the path of what was wrong")
_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
_IF_MATCH = {
    "name": "If-Match", "in": "header", "required": False, "schema": {"type": "string"},
    "description": "the campaign's ETag as last read: the change applies only if nobody "
    "changed it since (412 otherwise)",
}
_ETAG = {"ETag": {"description": "the campaign's version", "schema": {"type": "string"}}}


def _campaign_answer(description: str = "the campaign") -> dict[str, Any]:
    return {**_json(_ref("Campaign"), description), "headers": _ETAG}


OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("/admin/api/openapi.json", "get"): {
        "summary": "This document",
        "responses": {"200": _json({"type": "object"})},
    },
    ("/admin/api/campaigns", "get"): {
        "summary": "Every campaign, with its statistics",
        "responses": {"200": _json({
            "type": "object", "properties": {
                "campaigns": {"type": "array", "items": _ref("Campaign")}}})},
    },
    ("/admin/api/campaigns/{id}", "get"): {
        "summary": "One campaign, with its statistics (read-only, ignored on write)",
        "parameters": [_ID],
        "responses": {"200": _campaign_answer(), "404": _ERROR},
    },
    ("/admin/api/campaigns/{id}", "put"): {
        "summary": "Create or replace a campaign: keys left out take their defaults",
        "parameters": [_ID, _IF_MATCH, {
            "name": "If-None-Match", "in": "header", "required": False,
            "schema": {"const": "*"}, "description": "`*`: create only (412 if it exists)"}],
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": _ref("Campaign")},
            "application/yaml": {"schema": _ref("Campaign")}}},
        "responses": {"200": _campaign_answer("replaced"), "201": _campaign_answer("created"),
                      "400": _ERROR, "412": _ERROR},
    },
    ("/admin/api/campaigns/{id}", "patch"): {
        "summary": "Change some keys of a campaign (JSON merge patch, RFC 7396): keys left "
        "out keep their values, null removes a key",
        "parameters": [_ID, _IF_MATCH],
        "requestBody": {"required": True, "content": {
            "application/merge-patch+json": {"schema": {"type": "object"}},
            "application/json": {"schema": {"type": "object"}}}},
        "responses": {"200": _campaign_answer("changed"), "400": _ERROR, "404": _ERROR,
                      "412": _ERROR, "415": _ERROR},
    },
    ("/admin/api/campaigns/{id}", "delete"): {
        "summary": "Delete a campaign",
        "parameters": [_ID, _IF_MATCH],
        "responses": {"204": {"description": "deleted"}, "404": _ERROR, "412": _ERROR},
    },
    ("/admin/api/campaigns/{id}/test", "post"): {
        "summary": "Send the campaign's webhook once, now, for a user or a sample one",
        "parameters": [_ID],
        "requestBody": {"required": False, "content": {"application/json": {"schema": {
            "type": "object", "properties": {"user": {"type": "string"}}}}}},
        "responses": {"200": _json(_ref("DeliveryAttempt")), "400": _ERROR, "404": _ERROR},
    },
    ("/admin/api/campaigns/{id}/results", "get"): {
        "summary": "A/B results: every arm of a campaign with a goal against its control group",
        "parameters": [_ID],
        "responses": {"200": _json({"type": "object", "properties": {
            "campaign_id": {"type": "string"},
            "goal": {"type": ["object", "null"], "description": "event, within (seconds), "
                     "value field and where of the campaign's goal; null without one"},
            "minimum_sample": {"type": "integer", "description": "users an arm and the "
                               "control group need before a verdict"},
            "arms": {"type": "array", "items": _ref("ArmResult"),
                     "description": "each variant (or `treatment`), then `control`"}}}),
            "404": _ERROR},
    },
    ("/admin/api/campaigns/{id}/resume", "post"): {
        "summary": "Deliver again to the campaign's endpoints paused after 410 Gone",
        "parameters": [_ID],
        "requestBody": {"required": False, "content": {"application/json": {"schema": {
            "type": "object", "properties": {"endpoint": {"type": "string"}}}}}},
        "responses": {"200": _json({"type": "object", "properties": {
            "resumed": {"type": "integer"}}}), "404": _ERROR},
    },
    ("/admin/api/paused", "get"): {
        "summary": "Endpoints paused after answering 410 Gone",
        "responses": {"200": _json({"type": "object", "properties": {
            "paused": {"type": "array", "items": _ref("PausedEndpoint")}}})},
    },
    ("/admin/api/users/{identity}", "get"): {
        "summary": "A user's profile (why each campaign did or did not fire) and recent events",
        "parameters": [{"name": "identity", "in": "path", "required": True,
                        "schema": {"type": "string"}, "description": "user id or visitor id"}],
        "responses": {"200": _json({"type": "object", "properties": {
            "key": {"type": "string"}, "profile": {"type": "object"},
            "recent_events": {"type": "array", "items": {"type": "object"}}}}),
            "404": _ERROR},
    },
    ("/admin/api/deliveries", "get"): {
        "summary": "The delivery log, newest first",
        "parameters": [
            {"name": "campaign", "in": "query", "schema": {"type": "string"}},
            {"name": "status", "in": "query", "schema": {"enum": list(STATUSES)}},
            {"name": "id", "in": "query", "schema": {"type": "string"}},
            {"name": "limit", "in": "query",
             "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},
        ],
        "responses": {"200": _json({"type": "object", "properties": {
            "deliveries": {"type": "array", "items": _ref("DeliveryAttempt")}}}),
            "400": _ERROR},
    },
    ("/admin/api/deliveries/{id}/replay", "post"): {
        "summary": "Send a dead letter again: as stored, or re-rendered from the campaign's "
        "current action when the stored request cannot succeed",
        "parameters": [_ID],
        "responses": {"200": _json(_ref("ReplayAnswer")), "404": _ERROR},
    },
    ("/admin/api/events/stream", "get"): {
        "summary": "Accepted events, live, as Server-Sent Events",
        "parameters": [{"name": "backlog", "in": "query", "schema": {"enum": ["0", "1"]},
                        "description": "0: no recent events first"}],
        "responses": {"200": {"description": "event stream",
                              "content": {"text/event-stream": {"schema": {"type": "string"}}}}},
    },
}

_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
_REACH = _json({"type": "object", "properties": {
    "users": {"type": "integer", "description": "users matching now (scaled from the sample "
              "when `estimate`)"},
    "matched": {"type": "integer"}, "checked": {"type": "integer"},
    "known": {"type": "integer", "description": "known users (profiles) in the store"},
    "estimate": {"type": "boolean", "description": "counted over a sample, not every profile"},
    "seconds": {"type": "number"}, "summary": {"type": "string"}}})
_DEFINITIONS = {"variables": ("variable", _ref("VariableSpec")),
                "segments": ("segment", _ref("Condition"))}
for _kind, (_noun, _schema) in _DEFINITIONS.items():
    _answer = {**_json(_schema, f"the {_noun}"), "headers": {
        "ETag": {"description": f"the {_noun}'s version", "schema": {"type": "string"}}}}
    OPERATIONS[(f"/admin/api/{_kind}", "get")] = {
        "summary": f"Every {_noun}, by name, as in the config file",
        "responses": {"200": _json({"type": "object", "properties": {
            _kind: {"type": "object", "additionalProperties": _schema}}})},
    }
    OPERATIONS[(f"/admin/api/{_kind}/{{name}}", "get")] = {
        "summary": f"One {_noun}", "parameters": [_NAME],
        "responses": {"200": _answer, "404": _ERROR},
    }
    OPERATIONS[(f"/admin/api/{_kind}/{{name}}", "put")] = {
        "summary": f"Create or replace a {_noun}: checked like the config file, applied to the "
        "next event in every process, kept over the config file",
        "parameters": [_NAME, _IF_MATCH],
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": _schema}, "application/yaml": {"schema": _schema}}},
        "responses": {"200": _answer, "201": _answer, "400": _ERROR, "412": _ERROR},
    }
    OPERATIONS[(f"/admin/api/{_kind}/{{name}}", "delete")] = {
        "summary": f"Delete a {_noun}; refused (409) while a campaign, segment, variable or "
        "the test users use it, naming them",
        "parameters": [_NAME, _IF_MATCH],
        "responses": {"204": {"description": "deleted"}, "404": _ERROR, "409": _ERROR,
                      "412": _ERROR},
    }
OPERATIONS.update({
    ("/admin/api/segments/{name}/reach", "get"): {
        "summary": "How many known users are in a segment now (memory mode counts every "
        "profile within a time bound; Redis mode samples, and says it is an estimate)",
        "parameters": [_NAME], "responses": {"200": _REACH, "404": _ERROR},
    },
    ("/admin/api/reach", "post"): {
        "summary": "How many known users match a draft: a segment condition and/or a "
        "campaign's target (optionally test users only)",
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "properties": {
                "condition": _ref("Condition"), "target": {"type": "object"},
                "test_mode": {"type": "boolean"}}}}}},
        "responses": {"200": _REACH, "400": _ERROR},
    },
    ("/admin/api/campaigns/{id}/dry-run", "post"): {
        "summary": "Would the campaign (or a draft of it) fire for a user now, and with what "
        "request? Every step's outcome; nothing is sent or changed",
        "parameters": [_ID],
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "required": ["user"], "properties": {
                "user": {"type": "string"},
                "properties": {"type": "object", "description": "the trigger event's "
                               "properties (default: those of the user's latest such event)"},
                "campaign": _ref("Campaign")}}}}},
        "responses": {"200": _json({"type": "object", "properties": {
            "would_fire": {"type": "boolean"}, "verdict": {"type": "string"},
            "failed": {"type": "array", "items": {"type": "string"}},
            "steps": {"type": "array", "items": {"type": "object", "properties": {
                "step": {"type": "string"}, "outcome": {"enum": ["pass", "fail", "info"]},
                "detail": {"type": "string"}}}},
            "request": {"type": ["object", "null"]}, "sent": {"const": False}}}),
            "400": _ERROR, "404": _ERROR},
    },
    ("/admin/api/vocabulary", "get"): {
        "summary": "What the dashboard's pickers offer: event, property and trait names seen "
        "lately, variables, segments, built-ins, and the operators for each type",
        "responses": {"200": _json({"type": "object"})},
    },
    ("/admin/api/campaign-text", "post"): {
        "summary": "A campaign's YAML as a document ({yaml}), or a document as YAML ({campaign})",
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "properties": {"yaml": {"type": "string"},
                                             "campaign": {"type": "object"}}}}}},
        "responses": {"200": _json({"type": "object"}), "400": _ERROR},
    },
})


@cache
def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the admin API (built once)."""
    types = [CampaignSpec, DeliveryAttempt, PausedEndpoint, ReplayAnswer, ArmResult]
    _, components = msgspec.json.schema_components(
        types, schema_hook=_schema_hook, ref_template=REF
    )
    components["Campaign"] = {
        "allOf": [_ref("CampaignSpec")],
        "properties": {
            "stats": {"type": "object", "readOnly": True,
                      "description": "fired and suppressed (by reason) since the process started"},
            "stopped": {"type": ["string", "null"], "readOnly": True,
                        "description": "the stop condition reached, if any"},
        },
        "description": "a campaign as in the config file; `stats` and `stopped` are read-only "
        "and ignored on write, so a GET's answer can be edited and PUT back",
    }
    components["Condition"] = _schema_hook(ConditionTree)
    components["VariableSpec"] = {  # by hand: its window's default is one of the config's types
        "type": "object", "required": ["event", "stat"], "additionalProperties": False,
        "properties": {
            "event": {"anyOf": [{"type": "string"},
                                {"type": "array", "items": {"type": "string"}}]},
            "stat": {"enum": list(get_args(Stat))},
            "field": {"type": "string", "examples": ["properties.revenue"]},
            "where": _ref("Condition"),
            "window": {**_schema_hook(Window), "default": "all"},
            "default": {},
            "size": {"type": "integer", "minimum": 1, "maximum": 50, "default": 5},
        },
    }
    components["Error"] = {"type": "object", "required": ["error", "detail"], "properties": {
        "error": {"type": "string"}, "detail": {"type": "string"},
        "code": {"type": "string", "description": "the same as `error`"},
        "message": {"type": "string", "description": "the same as `detail`"},
        "problems": {"type": "array", "items": {"type": "string"}}}}
    paths: dict[str, dict[str, Any]] = {}
    for (path, method), operation in OPERATIONS.items():
        responses = {**operation["responses"], "401": _ERROR}
        paths.setdefault(path, {})[method] = {**operation, "responses": responses}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Tripwire admin API",
            "version": __version__,
            "description": "Campaigns, users, deliveries and live events of a Tripwire "
            "collector. On when TRIPWIRE_ADMIN_TOKEN is set; send it as a bearer token.",
        },
        "components": {
            "schemas": components,
            "securitySchemes": {"admin": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"admin": []}],
        "paths": paths,
    }
