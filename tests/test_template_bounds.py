"""Chat templates and prompts cannot stall the server or blow up its memory.

Templates are untrusted (a Modelfile's TEMPLATE comes from any key that may create models): each render
runs off the event loop, within a deadline, an iteration budget and a size cap; a prompt too long for the
model's context in bytes is refused before it is rendered or tokenized.
"""

from __future__ import annotations

import threading
import time
import tracemalloc
from pathlib import Path

import httpx
import ollama
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from backends.base import ChatMessage
from backends.chat_template import ChatTemplate, ChatTemplateError, chat_environment
from backends.tiny_model.tokenizer_files import CHAT_TEMPLATE
from gateway.generation import BYTES_PER_TOKEN
from tests.conftest import model_entry, start_server
from tests.real_assets import templates_dir

CHAT = [{"role": "user", "content": "Say something."}]
NESTED_LOOPS = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"
# nested loops with work inside: runs into the deadline before the iteration budget
SPIN = NESTED_LOOPS.replace(
    "{% endfor %}{% endfor %}", "{% set x = messages|tojson %}{% endfor %}{% endfor %}"
)
HUGE_STRING = '{{ ("x"*3000000000)|length }}'
MESSAGES = [ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="Hi %s {0}")]

# ---- the sandbox on its own --------------------------------------------------------------------------------

AMPLIFIERS = {
    "repeat": HUGE_STRING,
    "repeat, int first": "{{ 3000000000 * 'x' }}",
    "list repeat": "{{ ([1] * 3000000000)|length }}",
    "center filter": "{{ 'x'|center(3000000000) }}",
    "ljust method": "{{ 'x'.ljust(3000000000) }}",
    "format width": "{{ '{:>3000000000}'.format('x') }}",
    "nested format width": "{{ '{:>{w}}'.format('x', w=3000000000) }}",
    "printf width": "{{ '%3000000000s' % 'x' }}",
    "printf star": "{{ '%*s' % (3000000000, 'x') }}",
    "format filter": "{{ '%*s'|format(3000000000, 'x') }}",
    "indent filter": "{{ ('a\n' * 1000)|indent(3000000) }}",
    "doubling by ~": "{% set ns = namespace(s='x') %}{% for i in range(60) %}"
    "{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "doubling by +": "{% set ns = namespace(s='x') %}{% for i in range(60) %}"
    "{% set ns.s = ns.s + ns.s %}{% endfor %}",
    "replace filter": "{% set ns = namespace(s='xy') %}{% for i in range(60) %}"
    "{% set ns.s = ns.s|replace('', ns.s) %}{% endfor %}",
    "replace method": "{% set ns = namespace(s='xy') %}{% for i in range(60) %}"
    "{% set ns.s = ns.s.replace('', ns.s) %}{% endfor %}",
    "join": "{% set ns = namespace(s=['ab', 'cd']) %}{% for i in range(60) %}"
    "{% set ns.s = [ns.s|join(ns.s|join)] * 2 %}{% endfor %}",
    "power": "{{ 2 ** 3000000000 }}",
    "squaring": "{% set ns = namespace(x=3) %}{% for i in range(60) %}"
    "{% set ns.x = ns.x * ns.x %}{% endfor %}",
    "output": "{% for i in range(100000) %}{{ 'y' * 1000 }}{% endfor %}",
    "buffered output": "{% filter upper %}"
    + NESTED_LOOPS.replace("{% endfor %}{% endfor %}", "x{% endfor %}{% endfor %}")
    + "{% endfilter %}",
    "nested loops": NESTED_LOOPS,
    # shared containers: small in memory, but printing them prints each share
    "nested shared lists": "{% set ns = namespace(l=['x']) %}{% for i in range(40) %}"
    "{% set ns.l = [ns.l, ns.l] %}{% endfor %}{{ ns.l }}",
    "nested shared dicts": "{% set ns = namespace(l='x') %}{% for i in range(40) %}"
    "{% set ns.l = {'a': ns.l, 'b': ns.l} %}{% endfor %}{{ ns.l|tojson }}",
    "nested shared namespaces": "{% set ns = namespace(l='x') %}{% for i in range(40) %}"
    "{% set ns.l = namespace(a=ns.l, b=ns.l) %}{% endfor %}{{ ns.l }}",
    "repeated list of lists": "{% set ns = namespace(l=['x']) %}{% for i in range(40) %}"
    "{% set ns.l = [ns.l] * 2 %}{% endfor %}{{ ns.l }}",
    "a namespace grown after it was shared": "{% set ns = namespace(s='') %}{% set l = [ns] %}"
    "{% set ns.s = 'x' * 10000000 %}{{ l * 100 }}",
    "serialized repeat": "{{ (messages * 8000000)|tojson|length }}",
    "tojson indent": "{{ (messages * 100)|tojson(indent=3000000) }}",
    "tojson separators": "{{ (messages * 100)|tojson(separators=(', ' * 100000, ': ')) }}",
}


@pytest.mark.parametrize("name", AMPLIFIERS)
def test_templates_that_amplify_are_refused_before_they_allocate(name):
    tracemalloc.start()
    try:
        with pytest.raises(ChatTemplateError, match="went over its limits"):
            ChatTemplate(AMPLIFIERS[name]).render(MESSAGES)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 200 * 2**20, f"{peak / 2**20:.0f} MiB"


def test_a_template_that_spins_is_stopped_at_its_deadline():
    messages = [ChatMessage(role="user", content="x" * 20000)]
    with pytest.raises(ChatTemplateError, match=r"ran for more than 0\.5s"):
        ChatTemplate(SPIN, timeout_s=0.5).render(messages)


def test_runaway_recursion_is_the_template_s_error():
    with pytest.raises(ChatTemplateError, match="RecursionError"):
        ChatTemplate("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}").render(MESSAGES)


def test_the_output_cap_can_be_tightened_per_render():
    template = ChatTemplate("{% for m in messages %}{{ m.content }}{% endfor %}")
    assert template.render(MESSAGES, max_chars=100) == "Be brief.Hi %s {0}"
    with pytest.raises(ChatTemplateError, match="its output of"):
        template.render(MESSAGES, max_chars=10)


REAL_TEMPLATES = {
    "tiny (chatml)": CHAT_TEMPLATE,
    "system first, namespace, loop.last": (
        "{% set ns = namespace(system='') %}{% for m in messages if m.role == 'system' %}"
        "{% set ns.system = ns.system ~ m.content|trim %}{% endfor %}{{ bos_token }}"
        "{% if ns.system %}[SYS]{{ ns.system }}[/SYS]\n{% endif %}"
        "{% for m in messages %}{% if m.role != 'system' %}{{ loop.index0 }}/{{ loop.length }} "
        "{{ '%s: %s' % (m.role, m.content) }}{{ '' if loop.last else '\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '{}:'.format('assistant') }}{% endif %}{{ eos_token }}"
    ),
    "unpacking, literals": (
        "{% set a, b = 1, 2 %}{% for x, y in [(a, b), (3, 4)] %}{{ x }}{{ y }}{% endfor %}"
        "{{ {'k': [1, 2], 'm': messages[0]}|tojson }}{{ (1, 2) }}{{ [messages|length] }}"
    ),
    "macros, filters, else": (
        "{% macro turn(m) %}<{{ m.role|upper }}>{{ m.content|replace('%s', 'S')|indent(2) }}{% endmacro %}"
        "{% for m in messages|reverse %}{{ turn(m) }}{{ loop.cycle('|', '/') }}{% else %}empty{% endfor %}"
        "{{ messages|map(attribute='role')|join(', ') }} {{ messages|tojson|length }} {{ [1, 2] * 2 }}"
        "{{ 'ab' * 3 }}{{ 'x'|center(5) }}{{ '%-4s|'|format('k') }}{{ 2 ** 10 }}{{ 'a' + 'b' }}"
    ),
}


def _unbounded_render(source: str, messages: list[ChatMessage]) -> str:
    """The same template in the same environment on jinja's plain sandbox: no budget, no rewriting."""
    variables = ChatTemplate(source, "<s>", "</s>").variables(messages)
    return chat_environment(ImmutableSandboxedEnvironment).from_string(source).render(variables)


@pytest.mark.parametrize("name", REAL_TEMPLATES)
def test_templates_render_as_in_jinja_s_plain_sandbox(name):
    source = REAL_TEMPLATES[name]
    assert ChatTemplate(source, "<s>", "</s>").render(MESSAGES) == _unbounded_render(source, MESSAGES)


def _real_templates() -> list[Path]:
    return sorted(templates_dir().glob("*.jinja"))


@pytest.mark.parametrize("path", _real_templates(), ids=lambda path: path.stem)
def test_real_models_templates_render_as_in_jinja_s_plain_sandbox(path):
    """llama.cpp's collection of real models' chat templates: the bounds change none of their output."""
    source = path.read_text()
    conversation = [
        *MESSAGES,
        ChatMessage(role="assistant", content="Hello!"),
        ChatMessage(role="user", content="Again"),
    ]
    try:
        expected = _unbounded_render(source, conversation)
    except Exception:  # some want tools or other fields; then ours must refuse as well
        with pytest.raises(ChatTemplateError):
            ChatTemplate(source, "<s>", "</s>").render(conversation)
        return
    assert ChatTemplate(source, "<s>", "</s>").render(conversation) == expected


def test_a_template_cannot_shadow_its_budget():
    source = "{% set __tandem_render_budget = none %}" + NESTED_LOOPS
    with pytest.raises(ChatTemplateError, match="went over its limits"):
        ChatTemplate(source).render(MESSAGES)


def test_a_template_that_does_not_compile_is_refused_at_once():
    with pytest.raises(ChatTemplateError, match="does not compile"):
        ChatTemplate("{% for %}")


# ---- end to end: a server that keeps serving while a bad template runs ------------------------------------


@pytest.fixture(scope="module")
def bounds_server(tiny_llama, tmp_path_factory):
    entry = model_entry(tiny_llama, "dev", preload=True)
    huge = {**model_entry(tiny_llama, "dev"), "name": "huge", "aliases": [], "chat_template": HUGE_STRING}
    running = start_server(
        {"profiles": {"dev": {"models": [entry, huge]}}}, tmp_path_factory.mktemp("bounds")
    )
    client = ollama.Client(host=running.base_url)
    client.create(model="spin", from_="tiny", template=SPIN)  # anyone who may create models can do this
    client.create(model="loops", from_="tiny", template=NESTED_LOOPS)
    yield running
    running.stop()


def _peak_rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def test_health_answers_while_a_spinning_template_renders(bounds_server):
    answered_while_running: list[int] = []
    outcome: list[httpx.Response] = []
    body = {"model": "spin", "messages": [{"role": "user", "content": "x" * 20000}]}
    bad = threading.Thread(
        target=lambda: outcome.append(
            httpx.post(f"{bounds_server.v1}/chat/completions", json=body, timeout=120)
        )
    )
    bad.start()
    while bad.is_alive():
        health = httpx.get(f"{bounds_server.base_url}/health", timeout=60)
        if bad.is_alive():
            answered_while_running.append(health.status_code)
        time.sleep(0.02)
    bad.join()
    assert outcome[0].status_code == 400
    error = outcome[0].json()["error"]
    assert error["param"] == "messages" and "ran for more than" in error["message"]
    # the loop kept serving: several health checks were answered while the render ran
    assert len(answered_while_running) >= 3 and set(answered_while_running) == {200}


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
def test_nested_loops_in_a_modelfile_template_are_refused(bounds_server, path):
    body = {"model": "loops", "messages": CHAT, "stream": False}
    response = httpx.post(bounds_server.base_url + path, json=body, timeout=120)
    assert response.status_code == 400
    error = response.json()["error"]
    # the iteration budget, or on a slow machine the deadline, whichever comes first
    assert "went over its limits" in (error if isinstance(error, str) else error["message"])


def test_a_huge_string_in_a_template_is_refused_without_allocating_it(bounds_server):
    before = _peak_rss_bytes(bounds_server.process.pid)
    response = httpx.post(
        f"{bounds_server.v1}/chat/completions", json={"model": "huge", "messages": CHAT}, timeout=60
    )
    assert response.status_code == 400
    assert "3000000000 characters is over the limit" in response.json()["error"]["message"]
    assert _peak_rss_bytes(bounds_server.process.pid) - before < 256 * 2**20
    assert _peak_rss_bytes(bounds_server.process.pid) < 2**30


HUGE_PROMPT = "lorem ipsum " * 320_000  # 3.8 MB (under the body limit): more than the context can hold


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": HUGE_PROMPT}]}),
        ("/v1/completions", {"prompt": HUGE_PROMPT}),
        ("/api/chat", {"messages": [{"role": "user", "content": HUGE_PROMPT}], "stream": False}),
        ("/api/generate", {"prompt": HUGE_PROMPT, "raw": True, "stream": False}),
        ("/api/generate", {"prompt": HUGE_PROMPT, "stream": False}),
    ],
)
def test_an_over_long_prompt_is_refused_before_it_is_tokenized(bounds_server, path, body):
    response = httpx.post(bounds_server.base_url + path, json={"model": "tiny", **body}, timeout=60)
    assert response.status_code == 400
    error = response.json()["error"]
    if path.startswith("/v1"):
        assert error["code"] == "context_length_exceeded"
        error = error["message"]
    # counted in bytes, not tokens: the refusal came before tokenizing
    assert f"at most {BYTES_PER_TOKEN} bytes a token" in error and "maximum context length" in error
