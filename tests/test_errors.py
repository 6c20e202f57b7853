"""Every RouterError maps to an OpenAI-shaped error with its status; upstream errors pass through."""

from __future__ import annotations

import json

import pytest

from router.core import errors
from router.http.error_handlers import error_response


def _all_subclasses(cls: type[errors.RouterError]) -> list[type[errors.RouterError]]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_all_subclasses(sub)]
    return found


def _make(cls: type[errors.RouterError]) -> errors.RouterError:
    if issubclass(cls, errors.UpstreamError):
        return cls(503, b'{"error": {"message": "busy", "type": "server_error", "param": null, "code": null}}')
    if issubclass(cls, errors.InvalidDeadline):
        return cls("bad deadline")
    if issubclass(cls, errors.AuthenticationFailed):
        return cls()
    if issubclass(cls, errors.IdempotencyKeyReused):
        return cls("call-1")
    return cls("something is wrong", param="p", code="c", retry_after=2.0)


@pytest.mark.parametrize("cls", [errors.RouterError, *_all_subclasses(errors.RouterError)], ids=lambda c: c.__name__)
def test_every_error_maps_to_openai_json(cls: type[errors.RouterError]) -> None:
    exc = _make(cls)
    response = error_response(exc)
    body = json.loads(response.content)
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    expected = exc.upstream_status if isinstance(exc, errors.UpstreamError) else cls.status
    assert response.status_code == expected
    assert 400 <= response.status_code <= 599
    if exc.retry_after is not None:
        assert response.headers["retry-after"] == "2"


def test_an_error_about_a_stored_call_names_it_and_says_whether_to_retry() -> None:
    exc = errors.ServiceUnavailable("Redis is away.", call_id="call-9", should_retry=True, retry_after=1.0)
    response = error_response(exc)
    body = json.loads(response.content)
    assert body["error"]["deferred_call_id"] == "call-9"
    assert response.headers["x-router-request-id"] == "call-9"
    assert response.headers["x-should-retry"] == "true"


def test_a_non_json_upstream_error_is_wrapped() -> None:
    response = error_response(errors.UpstreamError(502, b"<html>Bad Gateway</html>"))
    body = json.loads(response.content)
    assert response.status_code == 502
    assert body["error"]["type"] == "upstream_error"
    assert "Bad Gateway" in body["error"]["message"]


def test_deadline_errors_name_the_header() -> None:
    body = json.loads(error_response(errors.InvalidDeadline("no")).content)
    assert body["error"]["param"] == "X-Deadline"
    assert body["error"]["code"] == "invalid_deadline"


def test_config_error_says_file_field_and_problem() -> None:
    exc = errors.ConfigError("config/router.yaml", "batch.max_wait_s", "expected a number")
    assert str(exc) == "config/router.yaml: batch.max_wait_s: expected a number"
