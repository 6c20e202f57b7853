"""The router's error tree; only the HTTP layer turns these into OpenAI error JSON.

RouterError                     500 server_error
 ├── BadRequest                 400 invalid_request_error
 │    └── InvalidDeadline       400 invalid_request_error, param X-Deadline
 ├── AuthenticationFailed       401 invalid_request_error, code invalid_api_key
 ├── NotFound                   404 invalid_request_error
 ├── HeadersTooLarge            431 invalid_request_error, code request_header_fields_too_large
 ├── UpstreamError              the upstream's status and body, passed through
 ├── UpstreamUnavailable        502 upstream_error
 │    └── UpstreamTimeout       504 upstream_error
 ├── IdempotencyKeyReused       422 invalid_request_error, code idempotency_key_reused
 ├── ServiceUnavailable         503 server_error (Redis down, shutting down)
 └── TooManyRequests            429 rate_limit_exceeded (held-connection cap, queue cap)
      ├── TenantRateLimited     429 requests, code rate_limit_exceeded (a tenant's `rpm` or `max_deferred`)
      └── QuotaExceeded         429 insufficient_quota (a tenant's `daily_budget_usd`)
ConfigError                     not an HTTP error: a bad config, policy or pricing file

Litestar's own rejections (unknown route 404, wrong method 405, body too large 413) are shaped by
`error_handlers.http_error_handler`.
"""

from __future__ import annotations

from typing import ClassVar


class RouterError(Exception):
    """Root of every error the router raises on purpose."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        headers: dict[str, str] | None = None,
        call_id: str | None = None,
        should_retry: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.retry_after = retry_after
        self.headers = headers or {}
        self.call_id = call_id
        """The deferred call this error is about, once it is stored: named in the body and `X-Router-Request-Id`."""
        self.should_retry = should_retry
        """Sent as `x-should-retry` (which the OpenAI and Anthropic SDKs obey) when not None."""


class BadRequest(RouterError):
    """The request cannot be served as sent."""

    status = 400
    type = "invalid_request_error"


class InvalidDeadline(BadRequest):
    """`X-Deadline` is malformed, in the past or beyond the allowed maximum."""

    def __init__(self, message: str, *, code: str = "invalid_deadline") -> None:
        super().__init__(message, param="X-Deadline", code=code)


class AuthenticationFailed(RouterError):
    """No or an unknown proxy key."""

    status = 401
    type = "invalid_request_error"

    def __init__(self, message: str = "Incorrect API key provided.") -> None:
        super().__init__(message, code="invalid_api_key")


class NotFound(RouterError):
    """Unknown route, model or deferred call."""

    status = 404
    type = "invalid_request_error"


class HeadersTooLarge(RouterError):
    """More header bytes or header lines than `limits` allow (checked before authentication)."""

    status = 431
    type = "invalid_request_error"


class UpstreamError(RouterError):
    """An upstream answered with an error; its status and body go to the caller unchanged in meaning."""

    type = "upstream_error"

    def __init__(
        self, status: int, body: bytes, *, retry_after: float | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(f"upstream answered {status}", retry_after=retry_after, headers=headers)
        self.upstream_status = status
        self.body = body


class UpstreamUnavailable(RouterError):
    """The upstream could not be reached, or kept failing after the allowed retries."""

    status = 502
    type = "upstream_error"


class UpstreamTimeout(UpstreamUnavailable):
    """The upstream did not answer in time."""

    status = 504


class ServiceUnavailable(RouterError):
    """The router cannot take the call right now (its store is down, or it is stopping)."""

    status = 503
    type = "server_error"


class IdempotencyKeyReused(RouterError):
    """An `Idempotency-Key` already used for a request with another body; nothing was stored."""

    status = 422
    type = "invalid_request_error"

    def __init__(self, call_id: str) -> None:
        super().__init__(
            "This Idempotency-Key was already used for a request with a different body. Use a new key for a new "
            "request, or send the original body again to get its answer.",
            param="Idempotency-Key",
            code="idempotency_key_reused",
            headers={"x-router-request-id": call_id},
            should_retry=False,
        )


class TooManyRequests(RouterError):
    """The router will not take this call now (e.g. it holds as many connections as it may); nothing was stored."""

    status = 429
    type = "rate_limit_exceeded"


class TenantRateLimited(TooManyRequests):
    """A tenant is over one of its request limits (shaped as OpenAI's own rate-limit errors); nothing was stored."""

    type = "requests"


class QuotaExceeded(TooManyRequests):
    """A tenant spent its daily budget (shaped as OpenAI's `insufficient_quota`); nothing was stored."""

    type = "insufficient_quota"


class ConfigError(Exception):
    """A config, policy or pricing file is wrong; says where and what was expected."""

    def __init__(self, file: str, field: str | None, problem: str) -> None:
        where = f"{file}: {field}" if field else file
        super().__init__(f"{where}: {problem}")
        self.file = file
        self.field = field
        self.problem = problem
