"""Many clients at once, clients that go away, and a full queue — against a real server."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import pytest

from tests.conftest import SERVED_PROFILES, RunningServer, model_entry, start_server, wait_for_log

PROMPTS = [
    f"Story number {i}: the {word}"
    for i, word in enumerate(["red", "blue", "green", "gold", "iron", "salt", "wind", "rain"])
]


def _complete(server, prompt: str, stream: bool) -> str:
    client = server.openai()
    kwargs = dict(model="tiny", prompt=prompt, max_tokens=24, temperature=0, extra_body={"ignore_eos": True})
    if stream:
        return "".join(
            c.choices[0].text for c in client.completions.create(stream=True, **kwargs) if c.choices
        )
    return client.completions.create(**kwargs).choices[0].text


def test_eight_concurrent_clients_get_their_own_answers(server):
    expected = [_complete(server, p, stream=False) for p in PROMPTS]  # one at a time
    assert len(set(expected)) > 1  # distinct prompts give distinct answers, so mixing would show
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(_complete, server, p, i % 2 == 0) for i, p in enumerate(PROMPTS)]
        got = [f.result(timeout=120) for f in futures]
    assert got == expected


@dataclass
class QueueServer:
    server: RunningServer
    long: dict  # a streaming request that would run for many seconds if nobody stopped it


@pytest.fixture(scope="module", params=SERVED_PROFILES)
def small_queue_server(request, tiny_llama, tmp_path_factory):
    """Room for one running and one waiting request, and a long context for long generations."""
    if request.param == "dev":
        entry = model_entry(tiny_llama, "dev", context_length=16384) | {"parallel": 1}  # one running
        env, max_tokens = {"TANDEM_MAX_QUEUED_REQUESTS": "1"}, 16000
    else:  # the engine batches: one sequence at a time and one waiting makes the same shape
        entry = model_entry(tiny_llama, "prod")
        entry["engine"] |= {"max_num_seqs": 1, "max_waiting_requests": 1}
        env, max_tokens = {}, 4000
    config = {"profile": request.param, "profiles": {request.param: {"models": [{**entry, "preload": True}]}}}
    running = start_server(config, tmp_path_factory.mktemp(f"small-queue-{request.param}"), env=env)
    long = {
        "model": "tiny",
        "prompt": "Go on and on",
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
    }
    yield QueueServer(running, long)
    running.stop()


def test_disconnect_mid_stream_aborts_and_frees_the_model(small_queue_server):
    server, long = small_queue_server.server, small_queue_server.long
    with (
        httpx.Client(timeout=30) as client,
        client.stream("POST", f"{server.v1}/completions", json=long, headers={"x-request-id": "gone"}) as r,
    ):
        assert r.status_code == 200
        lines = r.iter_lines()
        received = [line for line, _ in zip(lines, range(6), strict=False) if line.startswith("data:")]
        assert received
        # leaving the block closed the connection mid-stream
    aborted = wait_for_log(server, r"request gone-0 aborted after (\d+) tokens")
    assert int(aborted.group(1)) < long["max_tokens"]
    follow_up = server.openai().completions.create(model="tiny", prompt="Next", max_tokens=4, temperature=0)
    assert follow_up.usage.completion_tokens == 4


def test_non_streaming_disconnect_aborts(small_queue_server):
    server, long = small_queue_server.server, small_queue_server.long
    body = {**long, "stream": False}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.v1}/completions", json=body, headers={"x-request-id": "impatient"}, timeout=1.5)
    aborted = wait_for_log(server, r"request impatient-0 aborted after (\d+) tokens")
    assert int(aborted.group(1)) < long["max_tokens"]


def test_a_non_streamed_response_whose_client_leaves_is_aborted(small_queue_server):
    """/v1/responses without stream reads its output as the stream does; a client that goes away still
    ends the generation (greedy on the tiny model: it writes thousands of tokens before any end)."""
    server, long = small_queue_server.server, small_queue_server.long
    body = {"model": "tiny", "input": "Go on", "max_output_tokens": long["max_tokens"], "temperature": 0}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.v1}/responses", json=body, headers={"x-request-id": "left"}, timeout=1.5)
    aborted = wait_for_log(server, r"request left-0 aborted after (\d+) tokens")
    assert int(aborted.group(1)) < long["max_tokens"]
    follow_up = server.openai().responses.create(model="tiny", input="Next", max_output_tokens=4)
    assert follow_up.usage.output_tokens == 4


def test_full_queue_answers_503_with_retry_after(small_queue_server):
    server, long = small_queue_server.server, small_queue_server.long
    with (
        httpx.Client(timeout=30) as running,
        httpx.Client(timeout=30) as waiting,
        running.stream(
            "POST", f"{server.v1}/completions", json=long, headers={"x-request-id": "q1"}
        ) as first,
    ):
        first_lines = first.iter_lines()  # keep a reference: dropping it closes the connection
        next(first_lines)  # generating now
        with waiting.stream(
            "POST", f"{server.v1}/completions", json=long, headers={"x-request-id": "q2"}
        ) as second:
            assert second.status_code == 200  # admitted, waiting behind the first
            third = httpx.post(f"{server.v1}/completions", json={**long, "stream": False}, timeout=10)
            assert third.status_code == 503, server.log()[-3000:]
            assert third.headers["retry-after"] == "1"
            assert third.json()["error"]["code"] == "queue_full"
            streamed = httpx.post(
                f"{server.v1}/chat/completions",
                timeout=30,
                json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": True},
            )
            assert streamed.status_code == 503  # refused before the stream starts, not inside it
    # both long requests were dropped by their clients; once the server has noticed, the model serves again
    wait_for_log(server, r"request q1-0 aborted")
    wait_for_log(server, r"request q2-0 aborted")
    done = server.openai().completions.create(model="tiny", prompt="After", max_tokens=3, temperature=0)
    assert done.usage.completion_tokens == 3
