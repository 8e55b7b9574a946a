"""Tool conversations through the real chat templates (llama.cpp's models/templates, from the sdist in
tandem's cache): tandem's renderer gives exactly the text transformers' apply_chat_template gives."""

from __future__ import annotations

import json

import pytest
from transformers.utils.chat_template_utils import render_jinja_template

from backends.chat_template import ChatTemplate, ChatTemplateError
from backends.conversation import Conversation, Message, Role, TextPart, ToolCall, ToolDefinition
from backends.template_inputs import takes_tools, template_variables
from tests.real_assets import templates_dir

WEATHER_TOOL = ToolDefinition(
    name="get_weather",
    description="The current weather in a city.",
    parameters=json.dumps(
        {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "the city"}},
            "required": ["city"],
        }
    ),
)
CALL = ToolCall(id="abcDEF123", name="get_weather", arguments='{"city": "Paris"}')
ROUND_TRIP = Conversation(
    messages=(
        Message.of_text(Role.SYSTEM, "You are a helpful assistant."),
        Message.of_text(Role.USER, "What's the weather in Paris?"),
        Message(Role.ASSISTANT, tool_calls=(CALL,)),
        Message(
            Role.TOOL,
            (TextPart('{"temperature": 18, "sky": "clear"}'),),
            tool_call_id=CALL.id,
            name="get_weather",
        ),
        Message.of_text(Role.ASSISTANT, "It is 18 °C in Paris — clear skies."),
        Message.of_text(Role.USER, "And in Tokyo?"),
    ),
    tools=(WEATHER_TOOL,),
)
FIRST_TURN = Conversation(
    messages=(Message.of_text(Role.USER, "What's the weather in Paris?"),), tools=(WEATHER_TOOL,)
)

# The templates issue 13 names, and the tokens their models use
TOOL_TEMPLATES = {
    "meta-llama-Llama-3.1-8B-Instruct.jinja": ("<|begin_of_text|>", "<|eot_id|>"),
    "meta-llama-Llama-3.2-3B-Instruct.jinja": ("<|begin_of_text|>", "<|eot_id|>"),
    "meta-llama-Llama-3.3-70B-Instruct.jinja": ("<|begin_of_text|>", "<|eot_id|>"),
    "Qwen-Qwen2.5-7B-Instruct.jinja": ("", "<|im_end|>"),
    "Qwen-Qwen3-0.6B.jinja": ("", "<|im_end|>"),
    "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use.jinja": ("<|begin_of_text|>", "<|im_end|>"),
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja": ("<|begin_of_text|>", "<|im_end|>"),
    "mistralai-Mistral-Nemo-Instruct-2407.jinja": ("<s>", "</s>"),
    "Mistral-Small-3.2-24B-Instruct-2506.jinja": ("<s>", "</s>"),
    "deepseek-ai-DeepSeek-V3.1.jinja": ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja": ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
    "meetkai-functionary-medium-v3.1.jinja": ("<|begin_of_text|>", "<|eot_id|>"),
    "meetkai-functionary-medium-v3.2.jinja": ("<|begin_of_text|>", "<|eot_id|>"),
    "fireworks-ai-llama-3-firefunction-v2.jinja": ("<|begin_of_text|>", "<|eot_id|>"),
}


def _reference(source: str, conversation: Conversation, bos: str, eos: str) -> str:
    try:
        return _reference_with(source, conversation, bos, eos, arguments_as_text=False)
    except Exception:
        if not any(m.tool_calls for m in conversation.messages):
            raise
        return _reference_with(source, conversation, bos, eos, arguments_as_text=True)


def _reference_with(
    source: str, conversation: Conversation, bos: str, eos: str, arguments_as_text: bool
) -> str:
    variables = template_variables(conversation, source, arguments_as_text)
    return render_jinja_template(
        conversations=[variables["messages"]],
        tools=variables["tools"],
        chat_template=source,
        add_generation_prompt=True,
        bos_token=bos,
        eos_token=eos,
        **{k: v for k, v in variables.items() if k not in ("messages", "tools")},
    )[0][0]


@pytest.mark.parametrize("conversation", [FIRST_TURN, ROUND_TRIP], ids=["first-turn", "round-trip"])
@pytest.mark.parametrize("name", sorted(TOOL_TEMPLATES))
def test_tool_conversations_render_as_transformers_renders_them(name: str, conversation: Conversation):
    source = (templates_dir() / name).read_text()
    bos, eos = TOOL_TEMPLATES[name]
    try:
        expected = _reference(source, conversation, bos, eos)
    except Exception as exc:  # the template refuses this conversation: so must tandem, with its message
        with pytest.raises(ChatTemplateError) as refused:
            ChatTemplate(source, bos, eos).render_conversation(conversation)
        assert str(exc) in str(refused.value)
        return
    rendered = ChatTemplate(source, bos, eos).render_conversation(conversation)
    assert rendered == expected
    if conversation is ROUND_TRIP:
        assert "get_weather" in rendered and "18" in rendered  # the call and its result reached it
    assert ("get_weather" in rendered) == (takes_tools(source) or conversation is ROUND_TRIP)


def test_thinking_switch_reaches_the_template():
    source = (templates_dir() / "Qwen-Qwen3-0.6B.jinja").read_text()
    conversation = Conversation(messages=(Message.of_text(Role.USER, "hi"),), thinking=False)
    rendered = ChatTemplate(source, "", "<|im_end|>").render_conversation(conversation)
    assert rendered == _reference(source, conversation, "", "<|im_end|>")
    assert rendered.endswith("<think>\n\n</think>\n\n")


def test_gpt_oss_reads_the_effort_level_and_earlier_reasoning_as_thinking():
    source = (templates_dir() / "openai-gpt-oss-120b.jinja").read_text()
    conversation = Conversation(
        messages=(
            Message.of_text(Role.USER, "What's the weather in Paris?"),
            Message(Role.ASSISTANT, tool_calls=(CALL,), reasoning="The user wants Paris's weather."),
            Message(Role.TOOL, (TextPart('{"temperature": 18}'),), tool_call_id=CALL.id, name="get_weather"),
        ),
        tools=(WEATHER_TOOL,),
        thinking=True,
        reasoning_effort="high",
    )
    rendered = ChatTemplate(source, "", "<|return|>").render_conversation(conversation)
    assert rendered == _reference(source, conversation, "", "<|return|>")
    assert "Reasoning: high" in rendered
    # the reasoning that led to a call is shown to the model again, on the analysis channel
    assert "<|channel|>analysis<|message|>The user wants Paris's weather." in rendered
