"""The error tree. Each error carries its HTTP status and a stable code; one handler renders them.

TripwireError
├── ConfigError              a config file or campaign is invalid (every problem, with paths)
├── TagNotBuiltError         the built tag is missing from the package (tagfile.py)
└── HTTPError                answered as {"error": code, "detail": ...} (+ "code", "message")
    ├── BadRequest           400 malformed body, wrong types, missing ids
    │   └── InvalidCampaign  400 a campaign sent to the admin API (every problem, with paths)
    ├── Unauthorized         401 unknown or missing write key / admin token
    ├── Forbidden            403 a cookie-authenticated admin change from another site
    ├── NotFound             404
    ├── MethodNotAllowed     405
    ├── PreconditionFailed   412 an admin change made against a version that changed since
    ├── PayloadTooLarge      413 over the size limits
    ├── UnsupportedMediaType 415
    └── Unavailable          503 a backing service is down; carries Retry-After
"""

from __future__ import annotations


class TripwireError(Exception):
    """Base of every error Tripwire raises on purpose."""


class ConfigError(TripwireError):
    """A config is invalid; `problems` holds every `path: message`."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class HTTPError(TripwireError):
    """An error answered to an HTTP client."""

    status = 500
    code = "internal"

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}

    def payload(self) -> dict[str, object]:
        """The JSON body every HTTP answer for this error carries.

        `error` and `detail` are Tripwire's own names; `code` and `message` repeat them under
        the names Segment's client libraries read, so they can show why a request was refused.
        """
        code, detail = self.code, self.detail
        return {"error": code, "detail": detail, "code": code, "message": detail}


class BadRequest(HTTPError):
    """The request or a message in it is malformed."""

    status = 400
    code = "bad_request"


class InvalidCampaign(BadRequest):
    """A campaign sent to the admin API failed validation; `problems` lists every one."""

    code = "invalid_campaign"

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems

    def payload(self) -> dict[str, object]:
        """The JSON body, with every problem listed."""
        return {**super().payload(), "problems": self.problems}


class Unauthorized(HTTPError):
    """The write key or admin token is missing or unknown."""

    status = 401
    code = "unauthorized"


class NotFound(HTTPError):
    """No such resource."""

    status = 404
    code = "not_found"


class Forbidden(HTTPError):
    """A cookie-authenticated admin change coming from another site."""

    status = 403
    code = "forbidden"


class MethodNotAllowed(HTTPError):
    """The endpoint does not take this method."""

    status = 405
    code = "method_not_allowed"


class PayloadTooLarge(HTTPError):
    """A message or batch is over the size limits."""

    status = 413
    code = "payload_too_large"


class Conflict(HTTPError):
    """A change the current state refuses, such as deleting a segment a campaign uses."""

    status = 409
    code = "conflict"


class PreconditionFailed(HTTPError):
    """If-Match (or If-None-Match) names a version that is not the current one."""

    status = 412
    code = "precondition_failed"


class UnsupportedMediaType(HTTPError):
    """The body is neither JSON nor text/plain, or has an unknown encoding."""

    status = 415
    code = "unsupported_media_type"


class TooManyRequests(HTTPError):
    """A per-client or per-process cap (live streams, connections) is reached."""

    status = 429
    code = "too_many_requests"


class Unavailable(HTTPError):
    """A backing service is down; the client should retry later."""

    status = 503
    code = "unavailable"

    def __init__(self, detail: str, *, retry_after: int = 1) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})
