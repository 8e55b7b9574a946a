"""Schemathesis over the served OpenAPI schema, both profiles: no generated request gets a 5xx or hangs.

Requests that fit the schema and requests that do not, a fixed number per operation, derandomized: the
suite's run stays short and is the same on every machine. A longer exploration (more examples, same
assertion): `TANDEM_FUZZ_EXAMPLES=200 .venv/bin/pytest tests/test_fuzz.py` (`make fuzz`).
Every failure is collected, so one run reports all of them, each with a curl line that replays it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import httpx
import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st
from schemathesis import GenerationMode

from tests.conftest import model_entry, start_server

EXAMPLES = int(os.environ.get("TANDEM_FUZZ_EXAMPLES", "8"))
REQUEST_TIMEOUT_S = 60  # far above any answer the tiny model gives: a request still open then hangs
# Operations not fuzzed, and why; each has tests of its own with the parts it needs.
LEFT_OUT = {
    ("POST", "/api/pull"): "downloads from the Hugging Face Hub (tests/test_pull.py serves a fake one)",
}
LEFT_OUT_SHARED = {  # on the session's shared servers: the guarded server below fuzzes these
    **LEFT_OUT,
    ("POST", "/admin/keys"): "the keys and teams it makes would stay in the shared server for later tests",
    ("DELETE", "/admin/keys/{key_ref}"): "as POST /admin/keys",
    ("PUT", "/admin/teams/{team}"): "as POST /admin/keys",
}
MASTER = "sk-fuzz-master"
SERVED = ["tiny", "default", "tiny:latest"]  # what the shared server serves: most bodies name one of them
# Token budgets past this are cut to it (those past the context are kept: they must be refused), so that
# generated requests exercise generation without each running for thousands of tokens on a CPU.
MAX_TOKENS = 8
BUDGETS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
OPENAI_GENERATION = ("/v1/chat/completions", "/v1/completions")
OLLAMA_GENERATION = ("/api/chat", "/api/generate")


@dataclass(frozen=True)
class Failure:
    operation: str
    outcome: str  # the status and body, or the transport error
    replay: str  # a curl command line that sends the same request

    def __str__(self) -> str:
        return f"{self.operation}: {self.outcome}\n    {self.replay}"


def _short(value: object) -> object:
    if isinstance(value, int) and not isinstance(value, bool) and MAX_TOKENS < value <= 100_000:
        return MAX_TOKENS
    return value


def _steer(case, model: str | None):
    """Aim a generated body at a served model, and keep what it asks to generate short: without a budget
    a request generates up to the context length (4,096 tokens of the tiny model: minutes on a CPU)."""
    body = case.body
    if not isinstance(body, dict):
        return case
    if model is not None and "model" in body:
        body["model"] = model
    for key in BUDGETS:
        if key in body:
            body[key] = _short(body[key])
    if case.operation.path in OPENAI_GENERATION and "max_completion_tokens" not in body:
        body.setdefault("max_tokens", MAX_TOKENS)
    if case.operation.path == "/v1/responses":
        body.setdefault("max_output_tokens", MAX_TOKENS)
    if case.operation.path == "/v1/messages" and isinstance(body.get("max_tokens"), int):
        # up to 128,000 is cut to the context rather than refused (as Anthropic's API): keep it short
        body["max_tokens"] = min(body["max_tokens"], MAX_TOKENS)
    if case.operation.path in OLLAMA_GENERATION:
        options = body.setdefault("options", {})
        if isinstance(options, dict):
            budget = _short(options.get("num_predict", MAX_TOKENS))
            negative = isinstance(budget, int) and budget < 0  # -1, -2: until the context is full
            options["num_predict"] = MAX_TOKENS if negative else budget
    return case


def _cases(operation) -> st.SearchStrategy:
    modes = [GenerationMode.POSITIVE]
    if operation.body or any(True for _ in operation.iter_parameters()):  # something to get wrong
        modes.append(GenerationMode.NEGATIVE)
    cases = st.one_of(*(operation.as_strategy(generation_mode=mode) for mode in modes))
    models = st.one_of(st.sampled_from(SERVED), st.none())  # None: whatever the fuzzer made
    return st.builds(_steer, cases, models)


def _fuzz(operation, base_url: str, headers: dict[str, str], failures: list[Failure]) -> None:
    session = requests.Session()

    @hypothesis.settings(
        max_examples=EXAMPLES,
        derandomize=True,  # the same examples on every run and machine
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],  # nothing fails inside hypothesis: no shrinking
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis.given(case=_cases(operation))
    def run(case) -> None:
        replay = case.as_curl_command(headers=headers, base_url=base_url)
        try:
            response = case.call(
                base_url=base_url, session=session, headers=headers, timeout=REQUEST_TIMEOUT_S
            )
        except requests.Timeout:
            failures.append(Failure(operation.label, f"no answer within {REQUEST_TIMEOUT_S}s", replay))
            return
        except requests.ConnectionError as exc:
            failures.append(Failure(operation.label, f"connection failed: {exc}", replay))
            return
        if response.status_code >= 500:
            outcome = f"{response.status_code} {response.text[:300]}"
            failures.append(Failure(operation.label, outcome, replay))

    run()


def _fuzz_server(base_url: str, left_out: dict, headers: dict[str, str] | None = None) -> None:
    """Every operation of the served schema but those left out; fails with every 5xx and hang found."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    failures: list[Failure] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if (operation.method.upper(), operation.path) in left_out:
            continue
        operations += 1
        started = time.perf_counter()
        _fuzz(operation, base_url, headers or {}, failures)
        print(f"{operation.label:40} {time.perf_counter() - started:6.1f}s")
    print(f"fuzzed {operations} operations, {EXAMPLES} examples each")
    assert httpx.get(f"{base_url}/health", headers=headers).status_code == 200
    if failures:
        pytest.fail(f"{len(failures)} generated requests failed:\n" + "\n".join(map(str, failures)))


def _model_names(base_url: str, headers: dict[str, str] | None = None) -> set[str]:
    return {m["name"] for m in httpx.get(f"{base_url}/api/tags", headers=headers).json()["models"]}


def test_no_generated_request_gets_a_server_error(server):
    before = _model_names(server.base_url)
    try:
        _fuzz_server(server.base_url, LEFT_OUT_SHARED)
    finally:  # a create or copy the fuzzer got right: the next tests see the shared server as they expect it
        for name in _model_names(server.base_url) - before:
            httpx.request("DELETE", f"{server.base_url}/api/delete", json={"model": name})


@pytest.fixture(scope="module")
def guarded_server(tiny_llama, tmp_path_factory):
    config = {"profile": "dev", "profiles": {"dev": {"models": [model_entry(tiny_llama, "dev")]}}}
    running = start_server(config, tmp_path_factory.mktemp("fuzz-guarded"), env={"TANDEM_MASTER_KEY": MASTER})
    yield running
    running.stop()


def test_no_generated_request_gets_a_server_error_with_access_control_on(guarded_server):
    """The same with keys on (the in-process store), as the master key: key and team management too."""
    _fuzz_server(guarded_server.base_url, LEFT_OUT, {"Authorization": f"Bearer {MASTER}"})
