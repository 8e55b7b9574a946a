"""OpenAI Responses API response objects: the response, its output items and usage, and the stored responses'
answers (a deletion, a list of input items). The request's shapes are in gateway/responses_protocol.py.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from gateway.outbound import Outbound
from gateway.responses_protocol import (
    FunctionTool,
    FunctionToolChoice,
    ItemStatus,
    ReasoningConfig,
    ReasoningContent,
    ReasoningSummary,
    TextConfig,
)


class OutputText(Outbound):
    type: Literal["output_text"] = "output_text"
    text: str = ""
    annotations: list[dict[str, Any]] = Field(default_factory=list)
    logprobs: list[dict[str, Any]] = Field(default_factory=list)


class OutputMessage(Outbound):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    status: ItemStatus = "in_progress"
    content: list[OutputText] = Field(default_factory=list)


class OutputFunctionCall(Outbound):
    id: str
    type: Literal["function_call"] = "function_call"
    status: ItemStatus = "in_progress"
    call_id: str
    name: str
    arguments: str = ""


class OutputReasoning(Outbound):
    id: str
    type: Literal["reasoning"] = "reasoning"
    status: ItemStatus = "in_progress"
    summary: list[ReasoningSummary] = Field(default_factory=list)
    content: list[ReasoningContent] = Field(default_factory=list)


OutputItem = OutputMessage | OutputFunctionCall | OutputReasoning


class InputTokensDetails(Outbound):
    cached_tokens: int = 0


class OutputTokensDetails(Outbound):
    reasoning_tokens: int = 0


class ResponseUsage(Outbound):
    input_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


class IncompleteDetails(Outbound):
    reason: Literal["max_output_tokens", "content_filter"]


class ResponseError(Outbound):
    code: str
    message: str


class ResponseObject(Outbound):
    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    model: str
    output: list[OutputItem] = Field(default_factory=list)
    parallel_tool_calls: bool
    previous_response_id: str | None = None
    reasoning: ReasoningConfig | None = None
    store: bool
    temperature: float | None = None
    text: TextConfig
    tool_choice: Literal["none", "auto", "required"] | FunctionToolChoice
    tools: list[FunctionTool]
    top_p: float | None = None
    truncation: Literal["disabled"] = "disabled"
    usage: ResponseUsage | None = None
    user: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    background: bool = False
    service_tier: str = "default"

    @property
    def output_text(self) -> str:
        return "".join(
            part.text for item in self.output if isinstance(item, OutputMessage) for part in item.content
        )


class DeletedResponse(Outbound):
    id: str
    object: Literal["response"] = "response"  # as OpenAI answers a deletion
    deleted: bool = True


class InputItemList(Outbound):
    object: Literal["list"] = "list"
    data: list[dict[str, Any]]
    first_id: str | None
    last_id: str | None
    has_more: bool
