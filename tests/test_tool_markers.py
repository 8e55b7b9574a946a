"""Tool-call formats whose markers are special tokens (gpt-oss's harmony, Mistral's, Llama 3.1's, Granite's),
end to end.

The backends write special tokens as nothing, except those the request preserves: the markers of the format
its output is read in (backends.tools.markers). Checked on a real vocabulary (Llama 3.0's, where those
markers are plain text), on the tiny random model whose vocabulary holds the formats' markers as control
tokens (make_tiny_model(markers=True)) with the real templates, and through both servers: a strict tool
under auto, with logit_bias pushing the model to open a call, comes back as a schema-valid call.
"""

from __future__ import annotations

import json
import random

import httpx
import jsonschema
import numpy as np
import pytest

from backends.base import RenderOptions
from backends.chat_template import ChatTemplate
from backends.conversation import Conversation, Message, Role, ToolChoice, ToolChoiceKind, ToolDefinition
from backends.structured import StructuredCompiler, Vocabulary
from backends.tiny_model.tokenizer_files import MARKER_TOKENS
from backends.tool_prompt import render_prompt
from backends.tools.markers import markers_read
from backends.tools.strict import auto_call_output
from gateway.tool_calls import read_all, tool_plan
from tests.conftest import SERVED_PROFILES, model_entry, start_server
from tests.real_assets import templates_dir, vocab_path

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo"]}, "days": {"type": "integer"}},
    "required": ["city", "days"],
}
TIME = {"type": "object", "properties": {"utc": {"type": "boolean"}}, "required": ["utc"]}
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
TOOLS = tuple(ToolDefinition(n, f"{n} tool", json.dumps(s), strict=True) for n, s in SCHEMAS.items())
ASK = (Message.of_text(Role.USER, "Weather in Oslo?"),)
TEMPLATES = {
    "harmony": "openai-gpt-oss-120b.jinja",
    "mistral": "Mistral-Small-3.2-24B-Instruct-2506.jinja",
    "llama3_json": "meta-llama-Llama-3.1-8B-Instruct.jinja",
    "granite": "ibm-granite-granite-3.3-2B-Instruct.jinja",
}
# what logit_bias pushes to make the random model open a call: the trigger token (harmony: a call's header,
# token by token; the grammar writes the rest of it)
PUSHED = {
    "mistral": ("[TOOL_CALLS]",),
    "llama3_json": ("<|python_tag|>",),
    "granite": ("<|tool_call|>",),
    "harmony": ("<|channel|>commentary to=", "<|constrain|>"),
}


def _template(name: str) -> str:
    return (templates_dir() / name).read_text()


def _render(source: str, tokenize, tools=TOOLS, choice=ToolChoiceKind.AUTO):
    conversation = Conversation(ASK, tools, tool_choice=ToolChoice(choice))
    return render_prompt(ChatTemplate(source), conversation, RenderOptions(), tokenize, "m"), conversation


@pytest.fixture(scope="module")
def tiny_markers(tiny_model_root):
    from backends.tiny_model import make_tiny_model

    return make_tiny_model(tiny_model_root / "markers", arch="llama", seed=0, markers=True)


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_markers):
    from backends.paged.tokenizer import Tokenizer

    return Tokenizer.from_dir(tiny_markers.hf_dir, tiny_markers.vocab_size)


@pytest.fixture(scope="module")
def tiny_session(tiny_markers):
    from backends.llamacpp.session import LlamaSession

    session = LlamaSession.open(tiny_markers.gguf_path, context_length=None, threads=1, vocab_only=True)
    yield session
    session.close()


# ---- which markers are preserved ------------------------------------------------------------------------


def test_a_marker_that_is_plain_text_in_a_real_vocabulary_is_not_preserved():
    """Llama 3's real vocabulary (3.0's: no <|python_tag|> token yet) and llama.cpp's and the paged
    engine's tokenizers of it: neither Llama 3.1's <|python_tag|> nor Mistral's [TOOL_CALLS] is one token
    there, so nothing is preserved and their text is written as any text is. Its control tokens are written
    only when preserved (<|start_header_id|> here), end-of-generation ones never."""
    from backends.llamacpp.session import LlamaSession
    from backends.paged.gguf_tokenizer import tokenizer_from_gguf

    path = vocab_path("llama-bpe")
    session = LlamaSession.open(path, context_length=None, threads=1, vocab_only=True)
    try:
        paged = tokenizer_from_gguf(path, session.vocab_size)
        for tokenize in (lambda t: session.tokenize(t, add_special_tokens=False),
                         lambda t: paged.encode(t, add_special_tokens=False)):  # fmt: skip
            for fmt in ("llama3_json", "mistral"):
                prompt, _ = _render(_template(TEMPLATES[fmt]), tokenize)
                assert prompt.tool_format == fmt and not prompt.marker_token_ids
            assert len(tokenize("<|python_tag|>")) > 1 and tokenize("<|start_header_id|>") == [128006]
        header = 128006
        assert session.token_bytes(header) == paged.token_bytes(header) == b""
        assert session.output_bytes(header, frozenset()) == paged.output_bytes(header, frozenset()) == b""
        preserved = frozenset({header})
        written = {session.output_bytes(header, preserved), paged.output_bytes(header, preserved)}
        assert written == {b"<|start_header_id|>"}
        eos = 128001  # another control token stays unwritten
        assert session.output_bytes(eos, preserved) == paged.output_bytes(eos, preserved) == b""
        assert session.output_bytes(1000, frozenset({1000})) == session.token_bytes(1000) != b""
    finally:
        session.close()


def test_markers_are_preserved_only_where_a_reader_parses_them(tiny_tokenizer):
    def tokenize(text: str) -> list[int]:
        return tiny_tokenizer.encode(text, add_special_tokens=False)

    source = _template(TEMPLATES["mistral"])
    auto, _ = _render(source, tokenize)
    assert set(auto.marker_token_ids) == {"[TOOL_CALLS]", "[ARGS]", "[CALL_ID]"}
    for tools, choice in [((), ToolChoiceKind.AUTO), (TOOLS, ToolChoiceKind.NONE),
                          (TOOLS, ToolChoiceKind.REQUIRED)]:  # fmt: skip
        prompt, _ = _render(source, tokenize, tools, choice)
        assert not prompt.marker_token_ids, (tools, choice)  # no reader, or a forced call's JSON
    harmony, _ = _render(_template(TEMPLATES["harmony"]), tokenize, ())  # channels are read without tools
    assert set(harmony.marker_token_ids) == set(MARKER_TOKENS[:7])


def test_a_thinking_template_preserves_its_think_markers():
    """<think> is a special token in some vocabularies (DeepSeek-R1's): read wherever reasoning is split."""
    asked = Conversation(ASK)
    assert markers_read(asked, None, None, reasoning=True) == ("<think>", "</think>")
    assert markers_read(asked, "hermes", None, reasoning=False) == ()  # no tools: no calls to read
    with_tools = Conversation(ASK, TOOLS)
    assert markers_read(with_tools, None, "mistral", reasoning=True) == (
        "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]", "<think>", "</think>")  # fmt: skip


def test_both_detokenizers_write_preserved_tokens_and_only_those(tiny_tokenizer, tiny_session):
    ids = tiny_tokenizer.encode("Hi[TOOL_CALLS]get_time[ARGS]{}<|im_end|>", add_special_tokens=False)
    tool_calls, args = (tiny_tokenizer.encode(marker, False)[0] for marker in ("[TOOL_CALLS]", "[ARGS]"))
    assert ids == tiny_session.tokenize("Hi[TOOL_CALLS]get_time[ARGS]{}<|im_end|>", add_special_tokens=False)
    for write in (tiny_tokenizer.output_bytes, tiny_session.output_bytes):
        assert b"".join(write(t, frozenset()) for t in ids) == b"Higet_time{}"
        both = b"".join(write(t, frozenset({tool_calls, args})) for t in ids)
        assert both == b"Hi[TOOL_CALLS]get_time[ARGS]{}"  # <|im_end|> is not preserved: nothing
        assert b"".join(write(t, frozenset({args})) for t in ids) == b"Higet_time[ARGS]{}"


# ---- harmony read from recorded tokens --------------------------------------------------------------------

_ANALYSIS = "<|channel|>analysis<|message|>The user wants the weather.<|end|>"


@pytest.mark.parametrize(
    "written, reasoning, content, calls",
    [
        (f"{_ANALYSIS}<|start|>assistant<|channel|>final<|message|>It is sunny.<|return|>",
         "The user wants the weather.", "It is sunny.", []),
        (f'{_ANALYSIS}<|start|>assistant to=functions.get_weather<|channel|>commentary <|constrain|>json'
         '<|message|>{"city": "Oslo", "days": 1}<|call|>',
         "The user wants the weather.", "", [("get_weather", {"city": "Oslo", "days": 1})]),
    ],
)  # fmt: skip
def test_a_harmony_output_is_read_from_its_tokens(tiny_tokenizer, written, reasoning, content, calls):
    """The tokens a gpt-oss model writes, through the paged tokenizer's writer with the prompt's preserved
    markers: the analysis channel is the reasoning; the output ends on an end-of-generation token
    (<|return|>, <|call|>) that is not written, and the call is still complete."""

    def tokenize(text: str) -> list[int]:
        return tiny_tokenizer.encode(text, add_special_tokens=False)

    prompt, conversation = _render(_template(TEMPLATES["harmony"]), tokenize)
    preserved = frozenset(prompt.marker_token_ids.values())
    ids = tokenize(written)
    assert ids[-1] in tiny_tokenizer.eos_ids  # <|return|> / <|call|> end the generation, unwritten
    text = b"".join(tiny_tokenizer.output_bytes(t, preserved) for t in ids[:-1]).decode()
    plan = tool_plan(conversation, prompt, None)
    assert plan is not None and plan.channels
    reader = read_all(plan, text)
    assert (reader.reasoning, reader.content) == (reasoning, content)
    assert [(c.name, json.loads(c.arguments)) for c in reader.calls] == calls
    # unpreserved, the same tokens are no harmony: no reasoning, no call
    plain = read_all(plan, b"".join(tiny_tokenizer.token_bytes(t) for t in ids[:-1]).decode())
    assert not plain.reasoning and not plain.calls


# ---- through the servers -----------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=SERVED_PROFILES)
def markers_server(request: pytest.FixtureRequest, tiny_markers, tmp_path_factory):
    profile = request.param
    models = [model_entry(tiny_markers, profile, name=f"tiny-{fmt}", aliases=[],
                          chat_template=_template(name)) for fmt, name in TEMPLATES.items()]  # fmt: skip
    running = start_server({"profile": profile, "profiles": {profile: {"models": models}}},
                           tmp_path_factory.mktemp(f"markers-{profile}"))  # fmt: skip
    yield running
    running.stop()


def _tools() -> list[dict]:
    return [{"type": "function", "function": {"name": t.name, "description": t.description,
             "parameters": json.loads(t.parameters), "strict": True}} for t in TOOLS]  # fmt: skip


def _post(server, fmt: str, **body) -> dict:
    body = {"model": f"tiny-{fmt}", "messages": [{"role": "user", "content": "Weather in Oslo?"}],
            "temperature": 0, "max_tokens": 120, **body}  # fmt: skip
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def _pushed(tiny_tokenizer, fmt: str) -> dict[str, int]:
    """logit_bias that makes the random model open a call in `fmt` (PUSHED)."""
    ids = {t for text in PUSHED[fmt] for t in tiny_tokenizer.encode(text, add_special_tokens=False)}
    return {str(t): 40 for t in ids}


@pytest.mark.parametrize("fmt", sorted(TEMPLATES))
def test_a_strict_call_opened_by_its_special_token_is_schema_valid(markers_server, tiny_tokenizer, fmt):
    answer = _post(markers_server, fmt, tools=_tools(), parallel_tool_calls=False,
                   logit_bias=_pushed(tiny_tokenizer, fmt))  # fmt: skip
    choice = answer["choices"][0]
    calls = choice["message"].get("tool_calls")
    assert calls and choice["finish_reason"] == "tool_calls", choice
    for call in calls:
        name = call["function"]["name"]
        jsonschema.validate(json.loads(call["function"]["arguments"]), SCHEMAS[name])
    assert "[TOOL_CALLS]" not in (choice["message"].get("content") or "")


@pytest.mark.parametrize("fmt", ["harmony", "mistral"])
def test_a_streamed_strict_call_is_the_unary_one(markers_server, tiny_tokenizer, fmt):
    client = markers_server.openai()
    kwargs = {"model": f"tiny-{fmt}", "messages": [{"role": "user", "content": "Weather in Oslo?"}],
              "temperature": 0, "max_tokens": 120, "tools": _tools(), "parallel_tool_calls": False,
              "logit_bias": _pushed(tiny_tokenizer, fmt)}  # fmt: skip
    (whole,) = client.chat.completions.create(**kwargs).choices[0].message.tool_calls
    chunks = [c for c in client.chat.completions.create(**kwargs, stream=True) if c.choices]
    deltas = [d for c in chunks for d in c.choices[0].delta.tool_calls or ()]
    assert deltas[0].function.name == whole.function.name
    assert "".join(d.function.arguments or "" for d in deltas) == whole.function.arguments
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_without_tools_a_marker_token_adds_no_text(markers_server, tiny_tokenizer):
    """No reader parses Mistral's markers without tools: the token is sampled (pushed) but writes nothing."""
    answer = _post(markers_server, "mistral", max_tokens=4, logit_bias=_pushed(tiny_tokenizer, "mistral"))
    assert answer["usage"]["completion_tokens"] == 4
    assert answer["choices"][0]["message"]["content"] in ("", None)


# ---- the grammar over a vocabulary with the markers as special tokens -----------------------------------

_OPENINGS = {  # what the model has written when the walk starts: free text, then the call's first marker
    "mistral": "Sure. [TOOL_CALLS]",
    "llama3_json": "Sure. <|python_tag|>",
    "granite": "Sure. <|tool_call|>",
    "harmony": "<|channel|>analysis<|message|>Sure.<|end|><|start|>assistant<|channel|>commentary to=",
}


@pytest.mark.parametrize("fmt", sorted(_OPENINGS))
def test_random_walks_under_strict_write_valid_calls_through_markers(tiny_markers, tiny_tokenizer, fmt):
    """Tokens drawn at random among those the grammar allows (a random model's output under it), from the
    format's special marker token on: the output, written with the preserved markers, reads back as calls
    whose arguments match their schemas. Without the markers preserved the grammar refuses the marker."""
    tok = tiny_tokenizer
    table = [tok.token_bytes(t) for t in range(tiny_markers.vocab_size)]
    vocabulary = Vocabulary(table, tok.eos_ids, tok.special_bytes)
    compiler = StructuredCompiler(vocabulary, max_threads=1)
    conversation = Conversation(ASK, TOOLS, parallel_tool_calls=False)
    source = _template(TEMPLATES[fmt])
    prompt, _ = _render(source, lambda t: tok.encode(t, add_special_tokens=False))
    assert prompt.tool_format == fmt and prompt.marker_token_ids
    preserved = frozenset(prompt.marker_token_ids.values())
    opening = tok.encode(_OPENINGS[fmt], add_special_tokens=False)
    marker = next(t for t in opening if t in preserved)
    bare = auto_call_output(conversation, fmt, prompt.marker_token_ids)
    assert bare is not None
    unpreserved = compiler.matcher(bare)
    assert all(unpreserved.accept(t) for t in opening[: opening.index(marker)])
    assert not unpreserved.allowed_mask()[marker]
    spec = auto_call_output(conversation, fmt, prompt.marker_token_ids, preserved)
    assert spec is not None
    plan = tool_plan(conversation, prompt, None, strict_grammar=True)
    assert plan is not None
    for seed in range(6):
        rng, matcher, tokens = random.Random(seed), compiler.matcher(spec), list(opening)
        assert all(matcher.accept(t) for t in tokens)
        for _ in range(300):
            token = int(rng.choice(np.flatnonzero(matcher.allowed_mask())))
            assert matcher.accept(token)
            if matcher.is_terminated:
                break  # the end-of-generation token, unwritten
            tokens.append(token)
        assert matcher.is_terminated
        text = b"".join(tok.output_bytes(t, preserved) for t in tokens).decode("utf-8", errors="replace")
        reader = read_all(plan, text)
        assert len(reader.calls) == 1, text
        jsonschema.validate(json.loads(reader.calls[0].arguments), SCHEMAS[reader.calls[0].name])
