"""Real models' chat templates (llama.cpp's models/templates, from the sdist in tandem's cache, see
tests/real_assets.py): tandem's sandboxed renderer gives exactly the text transformers' apply_chat_template
gives, and where transformers raises, tandem raises ChatTemplateError carrying the template's own message
(which the gateway answers with a 400)."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest
from transformers.utils.chat_template_utils import render_jinja_template

from backends.base import ChatMessage
from backends.chat_template import ChatTemplate, ChatTemplateError
from tests.conftest import model_entry, start_server
from tests.real_assets import templates_dir

BOS, EOS = "<|bos|>", "<|eos|>"
CONVERSATIONS: dict[str, list[tuple[str, str]]] = {
    "system and user": [("system", "You are a terse assistant."), ("user", "What is the capital of France?")],
    "multi-turn": [("user", "Hi!"), ("assistant", "Hello! How can I help?"), ("user", "Tell me a joke.")],
    "system and multi-turn": [("system", "Be kind."), ("user", "2+2?"), ("assistant", "4"), ("user", "3+3?")],
    "unicode": [
        ("system", "Réponds en français 🇫🇷"),
        ("user", "Grüße 🌍 你好 — \"quotes\", <tags> & 'apostrophes'\n\tindented  spaces"),
    ],
    "user only": [("user", "hello")],
    # conversations many templates refuse
    "two users in a row": [("user", "a"), ("user", "b")],
    "assistant first": [("assistant", "I start."), ("user", "ok")],
    "late system": [("user", "a"), ("assistant", "b"), ("system", "late"), ("user", "c")],
    "empty": [],
}


def _templates() -> list[Path]:
    return sorted(templates_dir().glob("*.jinja"))


def _transformers(source: str, turns: list[tuple[str, str]], add_generation_prompt: bool) -> str | Exception:
    chat = [{"role": role, "content": content} for role, content in turns]
    try:
        rendered, _ = render_jinja_template(
            [chat], chat_template=source, add_generation_prompt=add_generation_prompt,
            bos_token=BOS, eos_token=EOS,
        )  # fmt: skip
    except Exception as exc:  # the template's own failure, whatever it raised
        return exc
    return rendered[0]


def _tandem(
    template: ChatTemplate, turns: list[tuple[str, str]], add_generation_prompt: bool
) -> str | Exception:
    messages = [ChatMessage(role, content) for role, content in turns]
    try:
        return template.render(messages, add_generation_prompt=add_generation_prompt)
    except ChatTemplateError as exc:
        return exc


def test_the_collection_is_there():
    assert len(_templates()) >= 70


@pytest.mark.parametrize("path", _templates(), ids=lambda path: path.stem)
def test_renders_what_transformers_renders(path: Path):
    source = path.read_text()
    template = ChatTemplate(source, BOS, EOS)  # all of them compile
    differences = []
    for name, turns in CONVERSATIONS.items():
        for add_generation_prompt in (True, False):
            expected = _transformers(source, turns, add_generation_prompt)
            got = _tandem(template, turns, add_generation_prompt)
            case = f"{name}, add_generation_prompt={add_generation_prompt}"
            if isinstance(expected, Exception):
                if not isinstance(got, ChatTemplateError) or str(expected) not in str(got):
                    differences.append(f"{case}: transformers raised {expected!r}, tandem gave {got!r}")
            elif got != expected:
                differences.append(f"{case}: expected {expected!r}, got {got!r}")
    assert differences == []


def test_a_refusal_carries_the_templates_own_message():
    source = (templates_dir() / "mistralai-Mistral-Nemo-Instruct-2407.jinja").read_text()
    with pytest.raises(ChatTemplateError) as refused:
        ChatTemplate(source, BOS, EOS).render([ChatMessage("user", "a"), ChatMessage("user", "b")])
    message = "After the optional system message, conversation roles must alternate user/assistant/"
    assert str(refused.value) == message + "user/assistant/..."


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{ messages[0]['content'] }}\n", "hi"),  # jinja's default: the template's last newline is dropped
        ("{% for m in messages %}{{ m.content }}{% break %}{% endfor %}", "hi"),  # loop controls
        ("{% generation %}{{ messages[0].content }}{% endgeneration %}", "hi"),  # training-mask markers
        ("{{ {'t': '<b>é</b>'}|tojson }}", '{"t": "<b>é</b>"}'),  # no HTML escaping, no \\u escapes
        ("{{ [1, 2]|tojson(indent=2) }}", "[\n  1,\n  2\n]"),
        ("{{ {'a': 1}|tojson(separators=(',', ':')) }}", '{"a":1}'),
        ("{{ tools is none }} {{ documents is none }}", "True True"),
    ],
)
def test_the_features_hugging_faces_environment_adds(source: str, expected: str):
    assert _transformers(source, [("user", "hi")], True) == expected
    assert ChatTemplate(source).render([ChatMessage("user", "hi")]) == expected


# ---- end to end: the gateway answers a template's refusal with a 400 carrying its message ------------------

NEMO_REFUSAL = "After the optional system message, conversation roles must alternate user/assistant/"


@pytest.fixture(scope="module")
def nemo_templated_server(tiny_llama, tmp_path_factory):
    """The tiny model on llama.cpp with Mistral Nemo's real template (a Modelfile TEMPLATE)."""
    source = (templates_dir() / "mistralai-Mistral-Nemo-Instruct-2407.jinja").read_text()
    entry = model_entry(tiny_llama, "dev", chat_template=source)
    server = start_server(
        {"profile": "dev", "profiles": {"dev": {"models": [entry]}}}, tmp_path_factory.mktemp("s")
    )
    yield server
    server.stop()


def test_a_templates_refusal_is_a_400_with_its_message(nemo_templated_server):
    server = nemo_templated_server
    two_users = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(openai.BadRequestError) as refused:
        server.openai().chat.completions.create(model="tiny", messages=two_users, max_tokens=2)
    assert NEMO_REFUSAL in refused.value.body["message"]
    response = httpx.post(
        f"{server.base_url}/api/chat",
        json={"model": "tiny", "messages": two_users, "stream": False},
        timeout=60,
    )
    assert response.status_code == 400 and NEMO_REFUSAL in response.json()["error"]
    alternating = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, *two_users[1:]]
    reply = server.openai().chat.completions.create(model="tiny", messages=alternating, max_tokens=2)
    assert reply.choices[0].finish_reason in ("stop", "length")
