"""The paged engine's greedy output equals Hugging Face transformers' generate(), token for token."""

from __future__ import annotations

import random

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from backends.base import FinishReason, GenerationRequest, QueueFullError, SamplingParams  # noqa: E402
from backends.paged.config import EngineConfig  # noqa: E402
from backends.paged.engine import LLMEngine, RequestRejectedError  # noqa: E402

MAX_TOKENS = 20
PROMPT_LENS = (1, 5, 16, 17, 31, 45, 70)


def _prompts(vocab: int) -> list[list[int]]:
    rng = random.Random(7)
    prompts = [[rng.randrange(vocab - 3) for _ in range(n)] for n in PROMPT_LENS]
    shared = prompts[-1][:40]  # repeated prefixes, so the prefix cache has something to find
    prompts += [shared + [rng.randrange(vocab - 3) for _ in range(k)] for k in (3, 9)]
    return prompts


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny matmuls: OpenMP threads only add synchronisation (ruinous on a loaded 2-core box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _greedy(max_tokens: int = MAX_TOKENS) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def reference(tiny_model):
    """(hf_dir, prompts, HF greedy continuations) for one architecture."""
    hf = transformers.AutoModelForCausalLM.from_pretrained(tiny_model.hf_dir, dtype=torch.float32).eval()
    prompts = _prompts(tiny_model.vocab_size)
    outputs = []
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([prompt])
            out = hf.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=MAX_TOKENS,
                do_sample=False,
                pad_token_id=tiny_model.endoftext_id,
            )
            outputs.append(out[0, len(prompt) :].tolist())
    # The tiny model keeps end-of-sequence tokens out of its first tokens, so HF ran the full length
    # and the engine's ignore_eos changes nothing.
    assert all(len(o) == MAX_TOKENS for o in outputs)
    return tiny_model.hf_dir, prompts, outputs


def _engine(hf_dir, **overrides) -> LLMEngine:
    config = EngineConfig(**({"num_kv_blocks": 256, "dtype": "float32", "device": "cpu"} | overrides))
    return LLMEngine.from_pretrained(hf_dir, config)


def _run_batch(engine: LLMEngine, prompts: list[list[int]]) -> list[list[int]]:
    requests = [GenerationRequest(f"r{i}", p, _greedy()) for i, p in enumerate(prompts)]
    outputs = engine.generate(requests)
    engine.check_invariants()
    return [outputs[f"r{i}"] for i in range(len(prompts))]


def test_one_at_a_time(reference):
    hf_dir, prompts, expected = reference
    engine = _engine(hf_dir)
    got = [_run_batch(engine, [p])[0] for p in prompts]
    assert got == expected
    assert engine.stats.prefix_cache_hits > 0  # the shared prefix came from the cache the second time


def test_all_at_once(reference):
    hf_dir, prompts, expected = reference
    engine = _engine(hf_dir, enable_prefix_caching=False)
    assert _run_batch(engine, prompts) == expected
    assert engine.stats.num_preemptions == 0
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def test_chunked_prefill(reference):
    hf_dir, prompts, expected = reference
    engine = _engine(hf_dir, max_num_batched_tokens=12, block_size=4)
    assert _run_batch(engine, prompts) == expected
    assert engine.stats.num_steps > MAX_TOKENS + max(PROMPT_LENS) // 12  # prompts really were chunked


def test_long_prefill_chunk_cap(reference):
    hf_dir, prompts, expected = reference
    engine = _engine(hf_dir, max_num_batched_tokens=64, long_prefill_chunk=8, max_num_seqs=3)
    assert _run_batch(engine, prompts) == expected


def test_preemption(reference):
    hf_dir, prompts, expected = reference
    # 10 blocks of 8 tokens: the longest sequence (70 + 20 tokens) fits alone, the batch does not.
    engine = _engine(hf_dir, num_kv_blocks=12, block_size=8)
    assert _run_batch(engine, prompts) == expected
    assert engine.stats.num_preemptions > 0
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def test_preemption_without_prefix_cache(reference):
    hf_dir, prompts, expected = reference
    engine = _engine(
        hf_dir, num_kv_blocks=12, block_size=8, enable_prefix_caching=False, max_num_batched_tokens=32
    )
    assert _run_batch(engine, prompts) == expected
    assert engine.stats.num_preemptions > 0


def test_identical_prompts_arriving_together_share_their_blocks(tiny_llama):
    """n > 1 choices (and identical prompts sent at once) compute the shared prompt once."""
    rng = random.Random(5)
    prompt = [rng.randrange(1000) for _ in range(66)]  # four full blocks of 16, and two more tokens
    alone = _engine(tiny_llama.hf_dir, block_size=16).generate([GenerationRequest("x", prompt, _greedy(6))])[
        "x"
    ]
    engine = _engine(tiny_llama.hf_dir, block_size=16)
    outputs = engine.generate([GenerationRequest(f"n{i}", prompt, _greedy(6)) for i in range(4)])
    assert all(tokens == alone for tokens in outputs.values())
    assert engine.stats.prefix_cache_hits == 3 * 64  # the three others found the first one's blocks
    assert engine.stats.num_prompt_tokens_computed == 66 + 3 * 2


def test_prefix_cache_computes_only_new_tokens(tiny_llama):
    engine = _engine(tiny_llama.hf_dir, block_size=16)
    rng = random.Random(3)
    prefix = [rng.randrange(1000) for _ in range(64)]
    first = engine.generate([GenerationRequest("a", [*prefix, 5, 6, 7], _greedy(4))])["a"]
    before = engine.stats
    assert before.prefix_cache_hits == 0
    assert before.num_prompt_tokens_computed == 67
    second = engine.generate([GenerationRequest("b", [*prefix, 9, 10], _greedy(4))])["b"]
    after = engine.stats
    assert after.prefix_cache_hits == 64  # four full blocks
    assert after.num_prompt_tokens_computed - before.num_prompt_tokens_computed == 2
    assert after.prefix_cache_queries == 67 + 66
    # The same prompt again: all but the last token's block comes from the cache.
    again = engine.generate([GenerationRequest("c", [*prefix, 5, 6, 7], _greedy(4))])["c"]
    assert again == first
    assert engine.stats.num_prompt_tokens_computed - after.num_prompt_tokens_computed == 3
    assert second and engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
    engine.check_invariants()


def test_finish_reasons_and_limits(tiny_llama):
    engine = _engine(tiny_llama.hf_dir, num_kv_blocks=8, block_size=8, max_waiting_requests=2)
    assert engine.max_model_len == 64  # capped by the pool: a sequence can always finish alone
    outputs = []
    engine.add_request(GenerationRequest("long", list(range(60)), _greedy(100)))
    engine.add_request(GenerationRequest("short", [1, 2, 3], _greedy(2)))
    with pytest.raises(QueueFullError):
        engine.add_request(GenerationRequest("over", [1], _greedy(2)))
    while engine.has_unfinished():
        outputs += engine.step()
    finals = {o.request_id: o for o in outputs if o.finish_reason is not None}
    assert finals["long"].finish_reason is FinishReason.LENGTH
    assert sum(len(o.new_token_ids) for o in outputs if o.request_id == "long") == 4  # 60 + 4 = 64
    assert finals["short"].finish_reason is FinishReason.LENGTH
    with pytest.raises(RequestRejectedError):
        engine.add_request(GenerationRequest("too-long", list(range(64)), _greedy(1)))
    with pytest.raises(RequestRejectedError):
        engine.add_request(GenerationRequest("empty", [], _greedy(1)))
    with pytest.raises(RequestRejectedError):
        engine.add_request(GenerationRequest("oov", [tiny_llama.vocab_size], _greedy(1)))


def test_abort_frees_blocks(tiny_llama):
    engine = _engine(tiny_llama.hf_dir, block_size=4)
    engine.add_request(GenerationRequest("x", list(range(30)), _greedy(50)))
    engine.add_request(GenerationRequest("y", list(range(10)), _greedy(50)))
    engine.add_request(GenerationRequest("queued", list(range(10)), _greedy(50)))
    engine.step()
    assert engine.block_manager.num_free_blocks < engine.block_manager.num_blocks
    assert engine.abort("x") == 1  # its prefill finished in the first step and sampled one token
    assert engine.abort("queued") is not None and engine.abort("unknown") is None
    engine.check_invariants()
    assert engine.abort("y") is not None
    assert not engine.has_unfinished()
    assert engine.step() == []
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
    engine.check_invariants()


def test_stop_token_ids_and_eos(tiny_llama):
    engine = _engine(tiny_llama.hf_dir)
    prompt = list(range(20, 40))
    free = engine.generate([GenerationRequest("free", prompt, _greedy(8))])["free"]
    stop_at = free[3]
    params = SamplingParams(max_tokens=8, temperature=0.0, stop_token_ids=(stop_at,))
    engine.add_request(GenerationRequest("stopped", prompt, params))
    outputs = []
    while engine.has_unfinished():
        outputs += engine.step()
    tokens = [t for o in outputs for t in o.new_token_ids]
    assert tokens == free[: free.index(stop_at) + 1]
    assert outputs[-1].finish_reason is FinishReason.STOP


_TRITON_SCRIPT = """
import json, sys
from backends.base import GenerationRequest, SamplingParams
from backends.paged.config import EngineConfig
from backends.paged.engine import LLMEngine
prompts = [list(range(5, 5 + n)) for n in (3, 17, 9)]
config = EngineConfig(
    num_kv_blocks=32, block_size=8, max_num_batched_tokens=16, dtype="float32", device="cpu"
)
engine = LLMEngine.from_pretrained(sys.argv[1], config)
params = SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True)
out = engine.generate([GenerationRequest(f"r{i}", p, params) for i, p in enumerate(prompts)])
print(json.dumps([out[f"r{i}"] for i in range(len(prompts))]))
"""


def test_triton_kernels_in_interpreter_mode_give_the_same_tokens(tiny_llama):
    """The engine's metadata drives the Triton kernels too (run on CPU by Triton's interpreter)."""
    pytest.importorskip("triton")
    import json
    import os
    import subprocess
    import sys

    env = os.environ | {"TANDEM_FORCE_TRITON": "1", "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _TRITON_SCRIPT, str(tiny_llama.hf_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    engine = _engine(tiny_llama.hf_dir, num_kv_blocks=32, block_size=8, max_num_batched_tokens=16)
    prompts = [list(range(5, 5 + n)) for n in (3, 17, 9)]
    want = [engine.generate([GenerationRequest("r", p, _greedy(5))])["r"] for p in prompts]
    assert got == want
