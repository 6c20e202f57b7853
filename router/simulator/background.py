"""Responses created with `background: true`, as the API keeps them: queued at creation, completed when retrieved,
cancelled when cancelled first (`GET /v1/responses/{id}`, `POST /v1/responses/{id}/cancel` in `openai_api`)."""

from __future__ import annotations

import msgspec

from router.simulator.errors import OpenAIError
from router.simulator.openai_types import ResponseObject


class Background:
    """Responses created with `background: true`, as the API keeps them: `queued` when created, `completed` (the
    answer computed at creation) from the first retrieve on, `cancelled` when cancelled before that."""

    def __init__(self) -> None:
        self.answers: dict[str, ResponseObject] = {}
        self.status: dict[str, str] = {}

    def create(self, answer: ResponseObject, *, stream: bool = False) -> ResponseObject:
        """Keep `answer` and return it as the API answers a background create: queued, no output yet."""
        if stream:
            raise OpenAIError(400, "The simulator does not stream background responses.", param="stream")
        answer.background = True
        self.answers[answer.id] = answer
        self.status[answer.id] = "queued"
        return self.shown(answer.id)

    def shown(self, response_id: str) -> ResponseObject:
        """The response as it stands (a 404 for an id it does not know)."""
        answer = self.answers.get(response_id)
        if answer is None:
            raise OpenAIError(
                404, f"Response with id '{response_id}' not found.", param="response_id", code="not_found"
            )
        status = self.status[response_id]
        if status == "completed":
            return answer
        return msgspec.structs.replace(answer, status=status, output=[], usage=None, completed_at=None)

    def retrieve(self, response_id: str) -> ResponseObject:
        """The response; a queued one has finished by the time it is asked for."""
        if self.status.get(response_id) == "queued":
            self.status[response_id] = "completed"
        return self.shown(response_id)

    def cancel(self, response_id: str) -> ResponseObject:
        """Cancel a background response that has not finished (again: the same answer); a finished one is a 400."""
        shown = self.shown(response_id)
        if self.status[response_id] == "completed":
            raise OpenAIError(400, "Cannot cancel a completed response.", param="response_id", code="invalid_request")
        self.status[response_id] = "cancelled"
        return msgspec.structs.replace(shown, status="cancelled")
