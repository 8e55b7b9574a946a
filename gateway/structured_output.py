"""Structured output requests (OpenAI response_format, Ollama format) as the backends' StructuredOutput.

Validation may import xgrammar on first use (seconds): routes call these through asyncio.to_thread.
"""

from __future__ import annotations

import json
from typing import Any

from backends.base import StructuredOutput
from backends.structured import InvalidStructuredOutputError, validate
from gateway.errors import bad_request
from gateway.openai_protocol import ResponseFormat


def checked_structured(spec: StructuredOutput, param: str) -> StructuredOutput:
    try:
        validate(spec)
    except InvalidStructuredOutputError as exc:
        raise bad_request(str(exc), param=param) from None
    return spec


def openai_structured(response_format: ResponseFormat | None) -> StructuredOutput | None:
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return StructuredOutput("json_object")
    # name, description and strict are accepted; generation is always strictly constrained
    schema = (response_format.json_schema or {}).get("schema")
    if not isinstance(schema, dict):
        param = "response_format.json_schema.schema"
        raise bad_request(f"'{param}' must be a JSON Schema object.", param=param)
    # no sort_keys: the order of the properties is the order they are generated in
    return checked_structured(StructuredOutput("json_schema", json.dumps(schema)), "response_format")


def ollama_structured(format_: str | dict[str, Any] | None) -> StructuredOutput | None:
    if format_ is None or format_ == "":
        return None
    if format_ == "json":
        return StructuredOutput("json_object")
    if isinstance(format_, dict):
        return checked_structured(StructuredOutput("json_schema", json.dumps(format_)), "format")
    raise bad_request(f'invalid format {format_!r}: use "json" or a JSON schema', param="format")
