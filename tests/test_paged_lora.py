"""LoRA on the paged engine: greedy output equals Hugging Face transformers + peft token for token, mixed
batches (base + adapters, more adapters than slots) equal each request run alone, the prefix cache never
shares KV across adapters, bad adapters fail at load with a clear message, and the backend's adapter API."""

from __future__ import annotations

import asyncio
import json
import random
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from safetensors.torch import load_file, save_file  # noqa: E402

from backends.base import GenerationRequest, SamplingParams  # noqa: E402
from backends.paged.backend import PagedBackend  # noqa: E402
from backends.paged.config import EngineConfig  # noqa: E402
from backends.paged.engine import LLMEngine, RequestRejectedError  # noqa: E402
from backends.paged.lora import (  # noqa: E402
    AdapterExistsError,
    AdapterLoadError,
    AdapterMismatchError,
    AdapterRankError,
    LoraDisabledError,
    UnknownAdapterError,
)

MAX_TOKENS = 12
ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Three adapters that differ in rank, scaling (one rsLoRA) and targets (fused shards adapted alone).
ADAPTERS: dict[str, dict] = {
    "full": dict(r=8, lora_alpha=16, target_modules=ALL),
    "qv": dict(r=4, lora_alpha=8, use_rslora=True, target_modules=["q_proj", "v_proj"]),
    "mix": dict(r=16, lora_alpha=8, target_modules=["k_proj", "o_proj", "gate_proj", "down_proj"]),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_peft_adapter(hf_dir: Path, out: Path, seed: int, **lora: object) -> Path:
    """A random LoRA for the base written by peft itself (B random too, so the adapter changes outputs)."""
    base = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    model = peft.get_peft_model(base, peft.LoraConfig(init_lora_weights=False, **lora))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.1)
    model.save_pretrained(out)
    return out


def _prompts(vocab: int) -> list[list[int]]:
    rng = random.Random(3)
    return [[rng.randrange(vocab - 3) for _ in range(n)] for n in (1, 7, 19, 40)]


def _greedy() -> SamplingParams:
    return SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def adapters(tiny_llama, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lora")
    return {
        name: make_peft_adapter(tiny_llama.hf_dir, root / name, seed, **kw)
        for seed, (name, kw) in enumerate(ADAPTERS.items())
    }


@pytest.fixture(scope="module")
def expected(tiny_llama, adapters) -> dict[str | None, list[list[int]]]:
    """Greedy continuations of every prompt by HF transformers, each adapter through peft (None: base)."""
    prompts = _prompts(tiny_llama.vocab_size)
    result: dict[str | None, list[list[int]]] = {}
    for name in (None, *adapters):
        model = transformers.AutoModelForCausalLM.from_pretrained(tiny_llama.hf_dir, dtype=torch.float32)
        if name is not None:
            model = peft.PeftModel.from_pretrained(model, adapters[name])
        model.eval()
        outs = []
        with torch.no_grad():
            for prompt in prompts:
                ids = torch.tensor([prompt])
                out = model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=MAX_TOKENS,
                    do_sample=False,
                    pad_token_id=tiny_llama.endoftext_id,
                )
                outs.append(out[0, len(prompt) :].tolist())
        assert all(len(o) == MAX_TOKENS for o in outs)
        result[name] = outs
    for name in adapters:  # else the parity below would prove nothing about the adapters
        assert result[name] != result[None], f"adapter {name} does not change the output"
    return result


def _engine(tiny_llama, adapters: dict[str, Path], **overrides) -> LLMEngine:
    config = {"num_kv_blocks": 128, "block_size": 8, "dtype": "float32", "device": "cpu"}
    config |= {"max_loras": 3, "max_lora_rank": 16}
    engine = LLMEngine.from_pretrained(tiny_llama.hf_dir, EngineConfig(**(config | overrides)))
    for name, path in adapters.items():
        engine.add_adapter(name, path)
    return engine


def _run(engine: LLMEngine, jobs: list[tuple[str | None, list[int]]]) -> list[list[int]]:
    requests = [GenerationRequest(f"r{i}", p, _greedy(), adapter=a) for i, (a, p) in enumerate(jobs)]
    outputs = engine.generate(requests)
    engine.check_invariants()
    return [outputs[f"r{i}"] for i in range(len(jobs))]


def test_greedy_output_equals_peft(tiny_llama, adapters, expected):
    engine = _engine(tiny_llama, adapters)
    prompts = _prompts(tiny_llama.vocab_size)
    for name in (None, *adapters):
        assert _run(engine, [(name, p) for p in prompts]) == expected[name], name
    engine.add_adapter("off", adapters["full"], scale=0.0)  # the user's scale multiplies the delta
    assert _run(engine, [("off", p) for p in prompts]) == expected[None]


def test_gguf_base_takes_peft_adapters(tiny_llama, adapters, expected):
    """The same weights from the F32 GGUF file: after loading, the layout is the checkpoint's."""
    from backends.paged.gguf_engine import engine_from_gguf

    config = EngineConfig(
        num_kv_blocks=64, block_size=8, dtype="float32", device="cpu", max_loras=2, max_lora_rank=16
    )
    engine = engine_from_gguf(tiny_llama.gguf_path, config)
    engine.add_adapter("full", adapters["full"])
    engine.add_adapter("qv", adapters["qv"])
    prompts = _prompts(tiny_llama.vocab_size)
    jobs = [(name, p) for p in prompts[:3] for name in ("full", "qv")]
    assert _run(engine, jobs) == [expected[name][prompts.index(p)] for name, p in jobs]


def test_mixed_batch_with_swapping_equals_each_alone(tiny_llama, adapters, expected):
    """Base and three adapters in one batch on two slots: the third waits, swaps in, and nothing changes."""
    engine = _engine(tiny_llama, adapters, max_loras=2)
    prompts = _prompts(tiny_llama.vocab_size)
    jobs = [(name, p) for p in prompts for name in (None, "full", "qv", "mix")]
    got = _run(engine, jobs)
    want = [expected[name][prompts.index(p)] for name, p in jobs]
    assert got == want
    stats = engine.stats
    assert stats.num_lora_loads >= 3  # every adapter went through a slot, so one was swapped in
    # ...and the batch really mixed: fewer steps than running the four groups one after another.
    assert stats.num_steps < 4 * (MAX_TOKENS + 1)
    alone = _engine(tiny_llama, adapters, max_loras=1)
    assert [_run(alone, [job])[0] for job in jobs[:8]] == want[:8]


def test_prefix_cache_is_never_shared_across_adapters(tiny_llama, adapters, expected):
    engine = _engine(tiny_llama, adapters)
    prompt = _prompts(tiny_llama.vocab_size)[3]  # 40 tokens: 4 full blocks of 8 can be cached (not the last)
    cached = 4 * 8

    def run(name: str | None) -> tuple[list[int], int]:
        hits = engine.stats.prefix_cache_hits
        out = _run(engine, [(name, prompt)])[0]
        return out, engine.stats.prefix_cache_hits - hits

    assert run("full") == (expected["full"][3], 0)
    assert run("qv") == (expected["qv"][3], 0)  # same tokens, another adapter: no hit
    assert run(None) == (expected[None][3], 0)  # nor the base
    assert run("full") == (expected["full"][3], cached)  # the same adapter hits its own blocks
    assert run(None) == (expected[None][3], cached)
    # Re-added under the same name (a new load, maybe new weights): the old KV is not its KV.
    engine.remove_adapter("full")
    engine.add_adapter("full", adapters["full"])
    assert run("full") == (expected["full"][3], 0)


def test_remove_adapter_lets_running_requests_finish(tiny_llama, adapters, expected):
    engine = _engine(tiny_llama, adapters)
    prompt = _prompts(tiny_llama.vocab_size)[1]
    engine.add_request(GenerationRequest("a", prompt, _greedy(), adapter="qv"))
    out = engine.step()[0].new_token_ids
    engine.remove_adapter("qv")
    assert engine.adapter_names() == ["full", "mix"]
    with pytest.raises(RequestRejectedError, match="no adapter named 'qv'"):
        engine.add_request(GenerationRequest("b", prompt, _greedy(), adapter="qv"))
    while engine.has_unfinished():
        out += [t for o in engine.step() for t in o.new_token_ids]
    assert out == expected["qv"][1]
    with pytest.raises(UnknownAdapterError, match="no adapter named 'qv'"):
        engine.remove_adapter("qv")


# ---------------------------------------------------------------------------------------- bad adapters


def _copy_with(src: Path, dst: Path, edit_tensors=None, edit_config=None) -> Path:
    shutil.copytree(src, dst)
    if edit_tensors is not None:
        tensors = load_file(dst / "adapter_model.safetensors")
        save_file(edit_tensors(tensors), dst / "adapter_model.safetensors")
    if edit_config is not None:
        cfg = json.loads((dst / "adapter_config.json").read_text())
        edit_config(cfg)
        (dst / "adapter_config.json").write_text(json.dumps(cfg))
    return dst


@pytest.fixture(scope="module")
def lora_engine(tiny_llama) -> LLMEngine:
    return _engine(tiny_llama, {}, max_lora_rank=8)


def test_rank_above_max_lora_rank(lora_engine, adapters):
    with pytest.raises(AdapterRankError, match=r"'mix' has rank 16, above this engine's max_lora_rank 8"):
        lora_engine.add_adapter("mix", adapters["mix"])
    assert lora_engine.adapter_names() == []


def test_wrong_base_shape(lora_engine, adapters, tmp_path):
    def narrower(tensors):
        key = "base_model.model.model.layers.1.mlp.up_proj.lora_A.weight"
        tensors[key] = tensors[key][:, :32].contiguous()  # trained on a base with 32 hidden units
        return tensors

    bad = _copy_with(adapters["full"], tmp_path / "bad", narrower)
    with pytest.raises(AdapterMismatchError, match=r"layers\.1\.mlp\.up_proj\.lora_A has shape \(8, 32\)"):
        lora_engine.add_adapter("bad", bad)


def test_missing_target_module(lora_engine, adapters, tmp_path, tiny_llama):
    def deeper(tensors):  # an adapter for a base with more layers
        return {k.replace("layers.1.", "layers.5."): v for k, v in tensors.items()}

    bad = _copy_with(adapters["full"], tmp_path / "deeper", deeper)
    with pytest.raises(
        AdapterMismatchError,
        match=r"targets 'model\.layers\.5\.[^']*', which the base model does not have \(2 layers\)",
    ):
        lora_engine.add_adapter("deeper", bad)
    head = make_peft_adapter(tiny_llama.hf_dir, tmp_path / "head", 0, r=4, target_modules=["lm_head"])
    with pytest.raises(AdapterMismatchError, match="target module 'lm_head' is not supported"):
        lora_engine.add_adapter("head", head)


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda cfg: cfg.update(use_dora=True), "use_dora=True is not supported"),
        (lambda cfg: cfg.update(modules_to_save=["lm_head"]), "modules_to_save"),
        (lambda cfg: cfg.update(peft_type="PREFIX_TUNING"), "not a LoRA adapter"),
    ],
)
def test_unsupported_config(lora_engine, adapters, tmp_path, edit, message):
    bad = _copy_with(adapters["qv"], tmp_path / "bad", edit_config=edit)
    with pytest.raises(AdapterLoadError, match=message):
        lora_engine.add_adapter("bad", bad)


def test_not_an_adapter_and_names(lora_engine, adapters, tiny_llama):
    with pytest.raises(AdapterLoadError, match="is not a directory"):
        lora_engine.add_adapter("x", tiny_llama.hf_dir / "nowhere")
    with pytest.raises(AdapterLoadError, match=r"adapter_config\.json not found"):
        lora_engine.add_adapter("x", tiny_llama.hf_dir)
    lora_engine.add_adapter("qv", adapters["qv"])
    try:
        with pytest.raises(AdapterExistsError, match="'qv' is already loaded"):
            lora_engine.add_adapter("qv", adapters["qv"])
        with pytest.raises(RequestRejectedError, match="no adapter named 'sql'"):
            lora_engine.check_request(GenerationRequest("r", [1, 2], _greedy(), adapter="sql"))
    finally:
        lora_engine.remove_adapter("qv")


def test_lora_off_by_default(tiny_llama, adapters):
    engine = LLMEngine.from_pretrained(tiny_llama.hf_dir, EngineConfig(num_kv_blocks=16, device="cpu"))
    assert engine.runner.lora is None  # nothing reserved
    with pytest.raises(LoraDisabledError, match="max_loras 0"):
        engine.add_adapter("qv", adapters["qv"])


# ---------------------------------------------------------------------------------------- the backend


def test_backend_adapter_api(tiny_llama, adapters, expected):
    config = EngineConfig(
        num_kv_blocks=64, block_size=8, dtype="float32", device="cpu", max_loras=2, max_lora_rank=16
    )
    prompts = _prompts(tiny_llama.vocab_size)

    async def main() -> None:
        backend = PagedBackend.load(tiny_llama.hf_dir, config, "tiny")
        try:
            await asyncio.to_thread(backend.add_adapter, "full", adapters["full"])
            await asyncio.to_thread(backend.add_adapter, "mix", adapters["mix"], 1.0)
            assert backend.adapters() == ["full", "mix"]

            async def one(i: int, name: str | None) -> list[int]:
                stream = backend.generate(
                    GenerationRequest(f"{name}-{i}", prompts[i], _greedy(), adapter=name)
                )
                return [t async for chunk in stream for t in chunk.token_ids]

            jobs = [(i, name) for i in range(len(prompts)) for name in (None, "full", "mix")]
            got = await asyncio.gather(*(one(i, name) for i, name in jobs))
            assert list(got) == [expected[name][i] for i, name in jobs]
            backend.remove_adapter("full")
            assert backend.adapters() == ["mix"]
            with pytest.raises(RequestRejectedError, match="no adapter named 'full'"):
                backend.generate(GenerationRequest("late", prompts[0], _greedy(), adapter="full"))
        finally:
            await backend.aclose()

    asyncio.run(main())
