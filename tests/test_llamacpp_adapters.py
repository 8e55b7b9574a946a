"""GGUF LoRA adapters on a raw llama.cpp context (backends/llamacpp/adapters.py): the adapter made by
`make-tiny-model --lora` loads, changes the logits, and its greedy output equals Hugging Face + peft's on the
PEFT copy of the same numbers; a bad adapter fails with a message naming what is wrong."""

from __future__ import annotations

import asyncio
import ctypes
import time
from pathlib import Path

import numpy as np
import pytest

llama_cpp = pytest.importorskip("llama_cpp")

from backends.llamacpp.adapters import BASE, AdapterLoadError, LlamaAdapters  # noqa: E402
from backends.llamacpp.native_log import route_native_logs  # noqa: E402

PROMPTS = ["Once upon a time", "def fibonacci(n):"]
STEPS = 16


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def tiny_pair(request, tiny_model_root: Path, tmp_path_factory):
    """The tiny model and a LoRA adapter for it (q/k/v/o + the MLP, so every path is adapted)."""
    from backends.tiny_model import make_tiny_model
    from backends.tiny_model.lora import TARGET_MODULES, make_tiny_lora

    arch = request.param
    model = make_tiny_model(tiny_model_root / arch, arch=arch, seed=0)
    lora = make_tiny_lora(
        tmp_path_factory.mktemp(f"lora-{arch}"),
        arch=arch,
        rank=4,
        alpha=8,
        targets=tuple(TARGET_MODULES),
        seed=3,
        base_model=str(model.hf_dir),
    )
    return model, lora


class RawContext:
    """A llama.cpp model and one context on it through the low-level API, as the batching engine holds them:
    F32 KV cache (exact parity, see the tiny model's docstring), one sequence."""

    def __init__(self, gguf_path: Path) -> None:
        route_native_logs()
        params = llama_cpp.llama_model_default_params()
        self.model = llama_cpp.llama_model_load_from_file(str(gguf_path).encode(), params)
        assert self.model
        ctx_params = llama_cpp.llama_context_default_params()
        ctx_params.n_ctx = 256
        ctx_params.n_batch = ctx_params.n_ubatch = 64
        ctx_params.type_k = ctx_params.type_v = llama_cpp.GGML_TYPE_F32
        ctx_params.n_threads = ctx_params.n_threads_batch = 1
        self.ctx = llama_cpp.llama_init_from_model(self.model, ctx_params)
        assert self.ctx
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.adapters = LlamaAdapters(self.model, gguf_path)

    def tokenize(self, text: str) -> list[int]:
        data = text.encode()
        buf = (llama_cpp.llama_token * (len(data) + 8))()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, len(buf), False, False)
        return list(buf[:n])

    def logits(self, tokens: list[int]) -> np.ndarray:
        """The last position's logits for `tokens`, computed from an empty KV cache."""
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)
        batch = llama_cpp.llama_batch_init(len(tokens), 0, 1)
        try:
            for i, token in enumerate(tokens):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, i, 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = i == len(tokens) - 1
            batch.n_tokens = len(tokens)
            assert llama_cpp.llama_decode(self.ctx, batch) == 0
        finally:
            llama_cpp.llama_batch_free(batch)
        pointer = llama_cpp.llama_get_logits_ith(self.ctx, -1)
        out = np.ctypeslib.as_array(
            ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), shape=(self.n_vocab,)
        )
        return out.copy()

    def greedy(self, tokens: list[int], steps: int) -> list[int]:
        out = list(tokens)
        for _ in range(steps):  # the whole prefix again each step: simple, and the tiny model is cheap
            out.append(int(np.argmax(self.logits(out))))
        return out[len(tokens) :]

    def close(self) -> None:
        self.adapters.close()
        llama_cpp.llama_free(self.ctx)
        llama_cpp.llama_model_free(self.model)


@pytest.fixture(scope="module")
def raw(tiny_pair):
    model, _ = tiny_pair
    context = RawContext(model.gguf_path)
    yield context
    context.close()


def test_adapter_loads_and_changes_the_logits(raw, tiny_pair):
    _, lora = tiny_pair
    raw.adapters.add("a", lora.gguf_path)
    try:
        tokens = raw.tokenize(PROMPTS[0])
        raw.adapters.apply(raw.ctx, BASE)
        base = raw.logits(tokens)
        assert raw.adapters.apply(raw.ctx, ("a",)) is True
        adapted = raw.logits(tokens)
        assert np.abs(adapted - base).max() > 0.5  # a real change, not float noise
        assert raw.adapters.apply(raw.ctx, ("a",)) is False  # the same set again: no switch
        assert raw.adapters.apply(raw.ctx, BASE) is True
        np.testing.assert_allclose(raw.logits(tokens), base, rtol=0, atol=1e-4)  # switching back is exact
    finally:
        raw.adapters.apply(raw.ctx, BASE)
        raw.adapters.remove("a")
    assert raw.adapters.names() == []


def test_scale_zero_is_the_base_and_scale_scales(raw, tiny_pair):
    _, lora = tiny_pair
    tokens = raw.tokenize(PROMPTS[1])
    raw.adapters.apply(raw.ctx, BASE)
    base = raw.logits(tokens)
    raw.adapters.add("zero", lora.gguf_path, scale=0.0)
    raw.adapters.add("full", lora.gguf_path, scale=1.0)
    try:
        raw.adapters.apply(raw.ctx, ("zero",))
        np.testing.assert_allclose(raw.logits(tokens), base, rtol=0, atol=1e-4)
        raw.adapters.apply(raw.ctx, ("full",))
        assert np.abs(raw.logits(tokens) - base).max() > 0.5
    finally:
        raw.adapters.remove("zero")  # removing adapters the context holds detaches them first
        raw.adapters.remove("full")
    np.testing.assert_allclose(raw.logits(tokens), base, rtol=0, atol=1e-4)


def _hf_peft_greedy(hf_dir: Path, peft_dir: Path, prompts: list[list[int]], steps: int) -> list[list[int]]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(peft_dir)).eval()
    outputs = []
    with torch.no_grad():
        for ids in prompts:
            out = model.generate(
                torch.tensor([ids]),
                max_new_tokens=steps,
                min_new_tokens=steps,
                do_sample=False,
                pad_token_id=0,
            )
            outputs.append(out[0, len(ids) :].tolist())
    return outputs


def test_greedy_output_with_the_adapter_equals_hf_peft(raw, tiny_pair):
    model, lora = tiny_pair
    prompts = [raw.tokenize(p) for p in PROMPTS]
    expected = _hf_peft_greedy(model.hf_dir, lora.peft_dir, prompts, STEPS)
    raw.adapters.add("parity", lora.gguf_path)
    try:
        raw.adapters.apply(raw.ctx, ("parity",))
        got = [raw.greedy(ids, STEPS) for ids in prompts]
        raw.adapters.apply(raw.ctx, BASE)
        base = [raw.greedy(ids, STEPS) for ids in prompts]
    finally:
        raw.adapters.remove("parity")
    assert got == expected
    assert got != base  # the adapter moved the greedy text: the comparison above says something


def test_adapter_for_another_model_size_is_refused(raw, tiny_pair, tmp_path):
    """An adapter whose tensors do not fit the base weights fails at load naming the tensor."""
    import gguf

    model, _ = tiny_pair
    arch = gguf.GGUFReader(str(model.gguf_path)).fields["general.architecture"]
    arch_name = bytes(arch.parts[arch.data[0]]).decode()
    path = tmp_path / "wrong.gguf"
    writer = gguf.GGUFWriter(str(path), arch_name)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 8.0)
    writer.add_tensor("blk.0.attn_q.weight.lora_a", np.zeros((4, 128), np.float32))  # in 128, base 64
    writer.add_tensor("blk.0.attn_q.weight.lora_b", np.zeros((64, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(
        AdapterLoadError, match=r"blk\.0\.attn_q\.weight is \[64 in, 64 out\].*\[128 in, 64 out\]"
    ):
        raw.adapters.add("wrong", path)
    assert raw.adapters.names() == []


def test_a_model_file_is_not_an_adapter(raw, tiny_pair):
    model, _ = tiny_pair
    with pytest.raises(AdapterLoadError, match=r"not a LoRA adapter: general\.type is 'model'"):
        raw.adapters.add("model", model.gguf_path)
    with pytest.raises(AdapterLoadError, match="no such adapter file"):
        raw.adapters.add("missing", model.gguf_path.parent / "nope.gguf")


def test_adapter_for_another_architecture_is_refused(raw, tiny_pair, tmp_path):
    from backends.tiny_model.lora import make_tiny_lora

    _, lora = tiny_pair
    other = "qwen2" if lora.arch == "llama" else "llama"
    foreign = make_tiny_lora(tmp_path, arch=other, rank=2, seed=5)
    with pytest.raises(AdapterLoadError, match=f"adapter for a '{other}' model, but the base model is"):
        raw.adapters.add("foreign", foreign.gguf_path)


def test_adapter_turns_keep_the_current_set_but_serve_every_set():
    from backends.llamacpp.adapters import AdapterTurns

    turns = AdapterTurns(max_steps=3)
    assert turns.choose({}) is None
    work = {BASE: 5.0, ("a",): 1.0, ("b",): 2.0}
    picked = [turns.choose(work) for _ in range(9)]
    # base was current and has work: 3 steps; then the longest waiting (a), then the other (b)
    assert picked == [BASE] * 3 + [("a",)] * 3 + [("b",)] * 3
    alone = AdapterTurns(max_steps=1)
    assert [alone.choose({("a",): 0.0}) for _ in range(4)] == [("a",)] * 4  # no one waits: no switch
    with pytest.raises(ValueError, match="max_steps"):
        AdapterTurns(max_steps=0)


def test_make_tiny_model_lora_writes_both_formats_from_the_same_numbers(tmp_path, capsys):
    import json

    import gguf
    from safetensors.numpy import load_file

    from backends.tiny_model.gguf_format import permute_for_llama_rope
    from gateway.cli import main

    assert (
        main(
            [
                "make-tiny-model",
                str(tmp_path / "m"),
                "--lora",
                str(tmp_path / "l"),
                "--rank",
                "4",
                "--alpha",
                "8",
                "--targets",
                "q_proj,down_proj",
                "--lora-seed",
                "7",
            ]
        )
        == 0
    )
    config = json.loads((tmp_path / "l" / "peft" / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"]) == ("LORA", 4, 8.0)
    assert config["target_modules"] == ["q_proj", "down_proj"]
    assert config["base_model_name_or_path"] == str(tmp_path / "m" / "hf")
    peft = load_file(str(tmp_path / "l" / "peft" / "adapter_model.safetensors"))
    assert sorted(peft) == sorted(
        f"base_model.model.model.layers.{layer}.{module}.lora_{ab}.weight"
        for layer in (0, 1)
        for module in ("self_attn.q_proj", "mlp.down_proj")
        for ab in "AB"
    )
    reader = gguf.GGUFReader(str(tmp_path / "l" / "adapter.gguf"))
    tensors = {t.name: np.asarray(t.data) for t in reader.tensors}
    prefix = "base_model.model.model.layers.1."
    np.testing.assert_array_equal(
        tensors["blk.1.ffn_down.weight.lora_a"], peft[prefix + "mlp.down_proj.lora_A.weight"]
    )
    np.testing.assert_array_equal(
        tensors["blk.1.ffn_down.weight.lora_b"], peft[prefix + "mlp.down_proj.lora_B.weight"]
    )
    q_b = permute_for_llama_rope(peft[prefix + "self_attn.q_proj.lora_B.weight"], 4)  # llama.cpp's rope order
    np.testing.assert_array_equal(tensors["blk.1.attn_q.weight.lora_b"], q_b)
    assert "LoRA adapter (GGUF)" in capsys.readouterr().out
    assert main(["make-tiny-model", "--lora", str(tmp_path / "x"), "--targets", "lm_head"]) == 2
    assert "targets must be some of" in capsys.readouterr().err


# ---- the batching engine with adapters (backends/llamacpp/engine.py) ---------------------------------------


class EngineRun:
    """A BatchEngine on one LlamaSession (1 thread: batched greedy == alone), stepped by the test itself, so
    which requests share a step is deterministic; streams are read on a private event loop."""

    def __init__(self, gguf_path: Path, parallel: int = 6) -> None:
        from backends.llamacpp.engine import BatchEngine
        from backends.llamacpp.session import LlamaSession

        self.session = LlamaSession.open(gguf_path, context_length=256, threads=1)
        self.engine = BatchEngine(
            self.session, parallel=parallel, context_length=256, cells=256 * parallel, model_name="tiny"
        )
        self.loop = asyncio.new_event_loop()
        self._ids = 0

    def submit(self, prompt: list[int], adapter: str | None, steps: int = STEPS):
        from backends.base import GenerationRequest, SamplingParams
        from backends.streams import ChunkSink, RequestStream

        self._ids += 1
        params = SamplingParams(max_tokens=steps, temperature=0.0, ignore_eos=True)
        request = GenerationRequest(f"r{self._ids}", list(prompt), params, adapter=adapter)
        sink = ChunkSink(self.loop)
        self.engine.add(request, sink, time.monotonic())
        return RequestStream(sink)

    def finish(self, streams) -> list[list[int] | BaseException]:
        while self.engine.has_work:
            self.engine.step()

        async def collect(stream) -> list[int] | BaseException:
            tokens: list[int] = []
            try:
                async for chunk in stream:
                    tokens += chunk.token_ids
            except Exception as exc:
                return exc
            return tokens

        return [self.loop.run_until_complete(collect(s)) for s in streams]

    def run(self, prompt: list[int], adapter: str | None, steps: int = STEPS) -> list[int] | BaseException:
        return self.finish([self.submit(prompt, adapter, steps)])[0]

    def close(self) -> None:
        self.engine.close()
        self.session.close()
        self.loop.close()


@pytest.fixture(scope="module")
def second_lora(tiny_pair, tmp_path_factory):
    from backends.tiny_model.lora import make_tiny_lora

    model, lora = tiny_pair
    return make_tiny_lora(
        tmp_path_factory.mktemp(f"lora2-{lora.arch}"),
        arch=lora.arch,
        rank=2,
        alpha=4,
        targets=("v_proj", "up_proj"),
        seed=11,
        base_model=str(model.hf_dir),
    )


@pytest.fixture
def engine_run(tiny_pair, second_lora):
    model, lora = tiny_pair
    run = EngineRun(model.gguf_path)
    run.engine.add_adapter("a", lora.gguf_path)
    run.engine.add_adapter("b", second_lora.gguf_path)
    yield run
    run.close()


def test_engine_runs_base_and_two_adapters_mixed_each_as_alone(engine_run, tiny_pair):
    model, lora = tiny_pair
    tokenize = engine_run.session.tokenize
    prompts = [tokenize(f"{p} {i}", add_special_tokens=False) for i, p in enumerate(PROMPTS * 3)]
    sets = [None, "a", "b", "a", None, "b"]
    alone = [engine_run.run(prompt, adapter) for prompt, adapter in zip(prompts, sets, strict=True)]
    assert alone[0] != engine_run.run(prompts[0], "a") != engine_run.run(prompts[0], "b")
    # the adapter's output in the engine is HF + peft's (the raw-context test above, now batched)
    assert alone[1] == _hf_peft_greedy(model.hf_dir, lora.peft_dir, [prompts[1]], STEPS)[0]
    switches, steps = engine_run.engine.adapters.switches, engine_run.engine.counters.steps
    mixed = engine_run.finish([engine_run.submit(p, a) for p, a in zip(prompts, sets, strict=True)])
    assert mixed == alone
    spans = list(engine_run.engine.spans)[-len(prompts) :]
    assert len({span.placed_step for span in spans}) == 1  # all six placed together: one mixed batch
    # one set per step, switching between steps: the three sets took turns, more than once each
    assert engine_run.engine.adapters.switches - switches >= 3
    assert engine_run.engine.counters.steps - steps >= 3 * STEPS  # no step ran two sets at once


def test_prefix_cache_is_never_shared_between_adapter_sets(engine_run):
    counters = engine_run.engine.counters
    prompt = engine_run.session.tokenize(PROMPTS[1], add_special_tokens=False)

    def hits(adapter: str | None) -> int:
        before = counters.prefix_hits
        engine_run.run(prompt, adapter, steps=2)
        return counters.prefix_hits - before

    assert hits(None) == 0
    assert hits("a") == 0  # the base's KV of the same prompt is kept, but it is wrong under adapter a
    assert hits("b") == 0
    assert hits("a") == len(prompt) - 1  # a's own KV is reused
    assert hits(None) == len(prompt) - 1  # and the base's is still there
    # a running sequence's prefix is copied only into a sequence of its own set (a prefix long enough to
    # be worth copying a stream: backends/llamacpp/slots.py)
    fresh = engine_run.session.tokenize(PROMPTS[0] * 8, add_special_tokens=False)
    assert len(fresh) > engine_run.engine.pool.min_copied
    running = engine_run.submit(fresh, "b", steps=4)
    engine_run.engine.step()
    before = counters.prefix_hits
    streams = [running, engine_run.submit(fresh, "a", steps=2), engine_run.submit(fresh, "b", steps=2)]
    engine_run.finish(streams)
    assert counters.prefix_hits - before == len(fresh) - 1  # the second b only


def test_engine_refuses_an_unknown_adapter_and_fails_requests_on_a_removed_one(engine_run, tiny_pair):
    from backends.base import BackendError

    prompt = engine_run.session.tokenize(PROMPTS[0], add_special_tokens=False)
    refused = engine_run.run(prompt, "nope")
    assert isinstance(refused, BackendError)
    assert str(refused) == "model 'tiny' has no LoRA adapter 'nope' (loaded: a, b)"
    assert isinstance(engine_run.run(prompt, "a", steps=2), list)
    running = engine_run.submit(prompt, "a", steps=8)
    engine_run.engine.step()
    waiting = engine_run.submit(prompt, "a", steps=8)
    engine_run.engine.remove_adapter("a")
    failed = engine_run.finish([running, waiting])
    assert all(isinstance(f, BackendError) and "adapter 'a' was removed" in str(f) for f in failed)
    assert engine_run.engine.adapter_names == ("b",)
    with pytest.raises(BackendError, match="has no LoRA adapter 'a'"):
        engine_run.engine.remove_adapter("a")
    # the removed adapter's KV is gone: a new adapter of the same name computes its prompt afresh
    _, lora = tiny_pair
    engine_run.engine.add_adapter("a", lora.gguf_path, scale=0.5)
    before = engine_run.engine.counters.prefix_hits
    assert isinstance(engine_run.run(prompt, "a", steps=2), list)
    assert engine_run.engine.counters.prefix_hits == before


def test_backend_adds_and_removes_adapters_on_its_worker_thread(tiny_pair):
    """add_adapter/remove_adapter are control jobs the worker runs between steps; a bad file's error comes
    back to the caller and the backend serves on; a closed backend refuses them."""
    from backends.base import BackendState, BackendUnavailableError
    from backends.llamacpp.backend import LlamaCppBackend

    model, lora = tiny_pair

    async def scenario() -> None:
        backend = LlamaCppBackend.load(
            model.gguf_path, model_name="tiny", context_length=128, max_queued=4, threads=1, parallel=2
        )
        try:
            await asyncio.to_thread(backend.add_adapter, "a", lora.gguf_path, 0.5)
            with pytest.raises(AdapterLoadError, match="not a LoRA adapter"):
                await asyncio.to_thread(backend.add_adapter, "bad", model.gguf_path)
            assert backend.adapters() == ["a"] and backend.health.state is BackendState.READY
            assert backend.engine.adapters.get("a").scale == 0.5
            await asyncio.to_thread(backend.remove_adapter, "a")
            assert backend.adapters() == []
        finally:
            await backend.aclose()
        with pytest.raises(BackendUnavailableError):
            backend.add_adapter("late", lora.gguf_path)

    asyncio.run(scenario())
