"""Dev ↔ prod parity: the same weights answer the same on llama.cpp and on the paged engine."""

from __future__ import annotations

import pytest

from tests.conftest import model_entry, start_server

PROMPTS = ["Once upon a time", "def fibonacci(n):", "Les élèves étudient 🚲", "  spaced\tout\n\ntext"]


@pytest.fixture(scope="module")
def both_backends(tiny_model, tmp_path_factory):
    """One server, one profile, the same tiny model twice: as GGUF on llama.cpp and as HF on the engine."""
    models = [
        {**model_entry(tiny_model, "dev"), "name": "on-llamacpp", "aliases": [], "preload": True},
        {**model_entry(tiny_model, "prod"), "name": "on-paged", "aliases": [], "preload": True},
    ]
    server = start_server({"profiles": {"dev": {"models": models}}}, tmp_path_factory.mktemp("parity"))
    yield server
    server.stop()


def _complete(client, model: str, prompt: str):
    return client.completions.create(
        model=model, prompt=prompt, max_tokens=24, temperature=0, extra_body={"ignore_eos": True}
    )


def test_greedy_completions_match(both_backends):
    client = both_backends.openai()
    for prompt in PROMPTS:
        dev, prod = _complete(client, "on-llamacpp", prompt), _complete(client, "on-paged", prompt)
        assert dev.usage.prompt_tokens == prod.usage.prompt_tokens, prompt  # same tokenization
        assert dev.choices[0].text == prod.choices[0].text, prompt


def test_greedy_chat_matches(both_backends):
    client = both_backends.openai()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]
    answers = [
        client.chat.completions.create(
            model=m, messages=messages, max_tokens=24, temperature=0, extra_body={"ignore_eos": True}
        )
        for m in ("on-llamacpp", "on-paged")
    ]
    assert answers[0].usage.prompt_tokens == answers[1].usage.prompt_tokens
    assert answers[0].choices[0].message.content == answers[1].choices[0].message.content
