"""Structured output (JSON mode, JSON schema) on both backends: constrained decoding makes even the
random-weight tiny model write valid JSON, and end-of-sequence comes only once the document is complete."""

from __future__ import annotations

import asyncio
import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
jsonschema = pytest.importorskip("jsonschema")
pytest.importorskip("xgrammar")

from backends.base import (  # noqa: E402
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    SamplingParams,
    StructuredOutput,
)
from backends.llamacpp.backend import LlamaCppBackend  # noqa: E402
from backends.llamacpp.sampler import SequenceSampler  # noqa: E402
from backends.paged.backend import PagedBackend  # noqa: E402
from backends.paged.config import EngineConfig  # noqa: E402
from backends.paged.engine import LLMEngine, RequestOutput  # noqa: E402
from backends.paged.sampler import SamplingBatch  # noqa: E402
from backends.paged.sequence import Sequence, SequenceStatus  # noqa: E402
from backends.paged.tokenizer import Tokenizer  # noqa: E402
from backends.structured import (  # noqa: E402
    InvalidStructuredOutputError,
    StructuredCompiler,
    Vocabulary,
    validate,
)

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "color": {"enum": ["red", "green", "blue"]},
    },
    "required": ["name", "age", "color"],
}
JSON_OBJECT = StructuredOutput("json_object")
JSON_SCHEMA = StructuredOutput("json_schema", json.dumps(SCHEMA))
PROMPT = "Give me a JSON object describing a person:"
# Free-form JSON from random weights has a long tail (strings end only when a quote is sampled); the
# tiny model completes these documents well within this bound (greedy ~80 tokens, seed 11 ~110 on llama.cpp).
MAX_TOKENS = 512
SEED = 11


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny matmuls: OpenMP threads only add synchronisation on a 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=["llamacpp", "paged"])
def backend(request: pytest.FixtureRequest, tiny_llama):
    if request.param == "llamacpp":
        loaded = LlamaCppBackend.load(
            tiny_llama.gguf_path, model_name="tiny", context_length=2048, max_queued=8
        )
    else:
        config = EngineConfig(max_num_seqs=8, max_num_batched_tokens=512, cpu_kv_cache_gib=0.05)
        loaded = PagedBackend.load(tiny_llama.hf_dir, config, "tiny")
    yield loaded
    asyncio.run(loaded.aclose())


def _params(spec: StructuredOutput | None, temperature: float = 0.0, **kw) -> SamplingParams:
    seed = None if temperature == 0.0 else SEED
    return SamplingParams(max_tokens=MAX_TOKENS, temperature=temperature, seed=seed, structured=spec, **kw)


def _chunks(backend, params: SamplingParams, request_id: str = "r") -> list[GenerationChunk]:
    async def collect() -> list[GenerationChunk]:
        request = GenerationRequest(request_id, backend.tokenize(PROMPT), params)
        return [chunk async for chunk in backend.generate(request)]

    return asyncio.run(collect())


def _generate(backend, params: SamplingParams, request_id: str = "r") -> tuple[str, FinishReason, int]:
    """The text, the finish reason and the number of tokens of one generation."""
    chunks = _chunks(backend, params, request_id)
    reason = chunks[-1].finish_reason
    assert reason is not None
    return "".join(c.text for c in chunks), reason, sum(len(c.token_ids) for c in chunks)


# --- the grammar layer ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "complaint"),
    [("{not json", "not valid JSON"), ("[1, 2]", "must be a JSON object"), ('{"type": "frob"}', "frob")],
)
def test_bad_schemas_are_refused_without_a_tokenizer(schema: str, complaint: str):
    with pytest.raises(InvalidStructuredOutputError, match=complaint):
        validate(StructuredOutput("json_schema", schema))
    validate(JSON_SCHEMA)
    validate(JSON_OBJECT)
    with pytest.raises(ValueError):
        StructuredOutput("json_object", schema)


def test_end_of_sequence_only_once_the_document_is_complete(tiny_llama):
    tok = Tokenizer.from_dir(tiny_llama.hf_dir, tiny_llama.vocab_size)
    compiler = StructuredCompiler(Vocabulary([tok.token_bytes(t) for t in range(1024)], tok.eos_ids))
    matcher = compiler.matcher(JSON_SCHEMA)
    eos = list(tok.eos_ids)
    for token in tok.encode('{"name": "Ann", "age": 7, "color": "red"', add_special_tokens=False):
        assert not matcher.allowed_mask()[eos].any()
        assert matcher.accept(token)
    assert not matcher.allowed_mask()[eos].any()
    assert not matcher.accept(tok.encode("]", add_special_tokens=False)[0])  # refused, state unchanged
    assert matcher.accept(tok.encode("}", add_special_tokens=False)[0])
    allowed = matcher.allowed_mask()
    assert set(np.flatnonzero(allowed)) == set(eos)  # complete: nothing may follow but the end
    assert not matcher.is_terminated
    assert matcher.accept(eos[0]) and matcher.is_terminated


def test_llamacpp_sampler_samples_only_allowed_tokens():
    allowed = np.zeros(50, dtype=bool)
    allowed[[3, 17]] = True
    logits = np.random.default_rng(0).normal(size=50).astype(np.float32) * 3
    sampler = SequenceSampler(
        SamplingParams(max_tokens=100, temperature=2.0, seed=1, logprobs=2), [1], 50, [49]
    )
    picks = [sampler.sample(logits, allowed) for _ in range(40)]
    assert {p.token_id for p in picks} == {3, 17}
    assert {t for p in picks for t, _ in p.top} == {3, 17}  # logprobs of the constrained distribution
    # The grammar, not min_tokens, decides when a constrained output may end.
    eos_only = np.zeros(50, dtype=bool)
    eos_only[49] = True
    constrained = SamplingParams(max_tokens=100, min_tokens=10, structured=JSON_OBJECT)
    assert SequenceSampler(constrained, [1], 50, [49]).sample(logits, eos_only).token_id == 49


def test_unconstrained_paged_batches_pay_nothing():
    seqs = [Sequence("a", [1, 2], SamplingParams(max_tokens=4), arrival=0)]
    assert SamplingBatch.build(seqs, 1024, (1023,)).grammar is None


# --- both backends, end to end --------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_json_object_mode_writes_a_complete_object(backend, temperature: float):
    text, reason, count = _generate(backend, _params(JSON_OBJECT, temperature))
    assert reason is FinishReason.STOP and count < MAX_TOKENS, text  # the document completed
    assert isinstance(json.loads(text), dict)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_json_schema_output_validates(backend, temperature: float):
    text, reason, _ = _generate(backend, _params(JSON_SCHEMA, temperature))
    assert reason is FinishReason.STOP, text
    jsonschema.validate(json.loads(text), SCHEMA)


def test_the_grammar_ends_the_output_despite_ignore_eos_and_min_tokens(backend):
    params = _params(JSON_SCHEMA, ignore_eos=True, min_tokens=MAX_TOKENS - 1)
    text, reason, count = _generate(backend, params)
    assert reason is FinishReason.STOP and count < MAX_TOKENS - 1
    jsonschema.validate(json.loads(text), SCHEMA)


def test_logprobs_list_only_tokens_the_grammar_allows(backend):
    chunks = _chunks(backend, _params(JSON_OBJECT, logprobs=5))
    logprobs = [lp for c in chunks for lp in c.logprobs or []]
    assert len(logprobs) == sum(len(c.token_ids) for c in chunks)
    assert all(math.isfinite(lp.logprob) and lp.top for lp in logprobs)
    assert all(math.isfinite(v) for lp in logprobs for _, _, v in lp.top)
    assert all(text.startswith("{") for _, text, _ in logprobs[0].top)  # only an object may start


def test_an_invalid_schema_is_refused(backend):
    params = _params(StructuredOutput("json_schema", '{"type": "frob"}'))
    if isinstance(backend, PagedBackend):
        with pytest.raises(InvalidStructuredOutputError, match="frob"):  # at admission
            backend.generate(GenerationRequest("bad", [1, 2, 3], params))
    else:
        # LlamaCppBackend.generate only queues the request: its worker refuses it, through the stream
        # (the gateway validates schemas before it calls any backend).
        with pytest.raises(InvalidStructuredOutputError, match="frob"):
            _generate(backend, params, "bad")
    text, reason, _ = _generate(backend, _params(JSON_OBJECT), "after")  # the backend serves on
    assert reason is FinishReason.STOP and json.loads(text) is not None


# --- the paged engine: batching and preemption ----------------------------------------------------------


def _engine(hf_dir, **overrides) -> LLMEngine:
    config = EngineConfig(**({"num_kv_blocks": 256, "dtype": "float32", "device": "cpu"} | overrides))
    return LLMEngine.from_pretrained(hf_dir, config)


def _run(
    engine: LLMEngine, requests: list[GenerationRequest], preempted: set[str] | None = None
) -> dict[str, tuple[list[int], FinishReason]]:
    """Output tokens and finish reason by request id; `preempted` collects the ids of requests that were
    preempted after they had started their output."""
    for request in requests:
        engine.add_request(request)
    tokens: dict[str, list[int]] = {r.request_id: [] for r in requests}
    reasons: dict[str, FinishReason] = {}
    while engine.has_unfinished():
        out: RequestOutput
        for out in engine.step():
            tokens[out.request_id] += out.new_token_ids
            if out.finish_reason is not None:
                reasons[out.request_id] = out.finish_reason
        if preempted is not None:
            preempted |= {
                s.request_id
                for s in engine.scheduler.waiting
                if s.status is SequenceStatus.PREEMPTED and s.num_output_tokens > 0
            }
    engine.check_invariants()
    return {rid: (tokens[rid], reasons[rid]) for rid in tokens}


def _document(engine: LLMEngine, tokens: list[int], reason: FinishReason) -> object:
    assert reason is FinishReason.STOP and tokens[-1] in engine.eos_ids
    assert engine.tokenizer is not None
    return json.loads(engine.tokenizer.decode(tokens[:-1]))


def test_constrained_and_unconstrained_requests_share_a_batch(tiny_llama):
    engine = _engine(tiny_llama.hf_dir)
    assert engine.tokenizer is not None
    prompt = engine.tokenizer.encode(PROMPT)
    free = GenerationRequest("free", prompt, SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True))
    json_req = GenerationRequest("json", prompt, _params(JSON_SCHEMA))
    seeded = GenerationRequest("seeded", prompt, _params(JSON_OBJECT, 1.0))
    alone = {r.request_id: _run(engine, [r])[r.request_id] for r in (free, json_req, seeded)}
    together = _run(engine, [free, json_req, seeded])
    assert together == alone  # each row behaves as if it were alone
    assert len(together["free"][0]) == 24 and together["free"][1] is FinishReason.LENGTH
    jsonschema.validate(_document(engine, *together["json"]), SCHEMA)
    assert isinstance(_document(engine, *together["seeded"]), dict)


def test_a_preempted_request_continues_its_document(tiny_llama):
    """Recompute replays prompt and output through the model, not through the grammar: the matcher stays
    on the sequence, so the output is the one an uninterrupted run gives."""
    reference = _engine(tiny_llama.hf_dir)
    assert reference.tokenizer is not None
    free = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)
    prompt = reference.tokenizer.encode(PROMPT)
    requests = [
        GenerationRequest("json-object", prompt, _params(JSON_OBJECT)),  # ~80 tokens
        GenerationRequest("schema", prompt, _params(JSON_SCHEMA)),  # ~60
        GenerationRequest("schema-sampled", prompt, _params(JSON_SCHEMA, 1.0)),  # ~60
        GenerationRequest("free", prompt, free),
    ]
    expected = {r.request_id: _run(reference, [r])[r.request_id] for r in requests}
    # 16 blocks of 8 tokens: any one sequence fits, the four together do not.
    engine = _engine(tiny_llama.hf_dir, num_kv_blocks=16, block_size=8)
    preempted: set[str] = set()
    got = _run(engine, requests, preempted)
    assert preempted & {"json-object", "schema", "schema-sampled"}
    assert got == expected
    for request in requests[:3]:
        _document(engine, *got[request.request_id])
