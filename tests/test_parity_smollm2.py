"""Dev ↔ prod parity on a real model: SmolLM2-135M-Instruct's Q4_1 GGUF on llama.cpp (quantized kernels)
and on the paged engine (the same file, dequantized to float32).

Teacher forcing feeds both the same token sequences, so one near-tie cannot send the two texts apart:
the top-1 token agrees at nearly every position, and where it does not, the two best logits were within a
fraction of a logit of each other. Greedy text does diverge after such a near-tie, and on the capital
question it does so at the first token (see the test)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("llama_cpp")

from backends.paged.config import EngineConfig  # noqa: E402
from backends.paged.engine import LLMEngine  # noqa: E402
from backends.paged.loader import load_gguf  # noqa: E402
from tests.conftest import start_server  # noqa: E402
from tests.teacher_forcing import llama_logits, open_llama, paged_logits  # noqa: E402

SYSTEM = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
)
CONVERSATIONS = [
    ("What is the capital of France?",
     "The capital of France is Paris. It lies on the Seine in the north of the country and has been the seat "
     "of the French government for most of the last thousand years. Paris is known for the Eiffel Tower, "
     "the Louvre museum, which holds the Mona Lisa, and the cathedral of Notre-Dame. About two million "
     "people live in the city itself and more than twelve million in the wider metropolitan area."),
    ("Write a Python function that returns the n-th Fibonacci number.",
     "Here is a simple iterative version:\n\n```python\ndef fibonacci(n):\n    a, b = 0, 1\n    for _ in "
     "range(n):\n        a, b = b, a + b\n    return a\n```\n\nIt runs in linear time and constant memory. "
     "For example, `fibonacci(10)` returns 55. A recursive version is shorter to write but takes "
     "exponential time unless you cache the results."),
    ("How do plants make their food?",
     "Plants make their food through photosynthesis. In the leaves, a green pigment called chlorophyll "
     "absorbs sunlight. The plant takes in carbon dioxide from the air through small pores and water from "
     "the soil through its roots. Using the energy of the light, it turns the water and carbon dioxide into "
     "glucose, a sugar it uses for energy and growth, and releases oxygen as a by-product."),
    ("Give me three tips for a good night's sleep.",
     "1. Keep a regular schedule: go to bed and wake up at the same time every day, even on weekends.\n"
     "2. Make your bedroom dark, quiet and cool, and keep screens out of it for the last hour before "
     "sleep.\n3. Avoid caffeine in the afternoon and heavy meals late in the evening. Regular exercise "
     "helps too, as long as it is not right before bedtime."),
    ("Translate 'good morning, how are you?' into Spanish and German.",
     "In Spanish: \"Buenos días, ¿cómo estás?\" In German: \"Guten Morgen, wie geht es dir?\" Both are the "
     "informal forms, used with friends and family. With someone you do not know well, you would say "
     "\"¿cómo está usted?\" in Spanish and \"wie geht es Ihnen?\" in German."),
    ("Explain what a black hole is to a ten-year-old.",
     "A black hole is a place in space where gravity pulls so hard that nothing can get out, not even "
     "light. That is why it looks black. Black holes form when a very big star runs out of fuel and "
     "collapses into a tiny space. Everything near it gets pulled in, like water going down a drain. "
     "Scientists cannot see black holes directly, but they can see how they pull on the stars around them."),
    ("What is the difference between a list and a tuple in Python?",
     "Both hold an ordered sequence of values, but a list is mutable and a tuple is not. You can append "
     "to a list, remove items from it or change an element in place, while a tuple stays exactly as it "
     "was created. Because tuples cannot change, they can be used as dictionary keys and are a little "
     "faster to create. Use a list for a collection that grows or shrinks, and a tuple for a fixed group "
     "of values, such as the x and y coordinates of a point: `point = (3, 4)`."),
    ("Summarize the water cycle in a few sentences.",
     "Water evaporates from oceans, lakes and rivers when the sun heats it, and plants release water vapour "
     "from their leaves. The vapour rises, cools and condenses into clouds. When the droplets in the clouds "
     "grow heavy enough, they fall as rain, snow or hail. The water then flows over the ground into rivers "
     "and seas or soaks into the soil to become groundwater, and the cycle begins again."),
]  # fmt: skip


@pytest.fixture(scope="module")
def smollm2_both(smollm2_gguf: Path):
    threads = min(2, os.cpu_count() or 1)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    model = load_gguf(smollm2_gguf, torch.float32, torch.device("cpu"))
    engine = LLMEngine(
        model, EngineConfig(num_kv_blocks=80, dtype="float32", device="cpu", max_model_len=1024)
    )
    # An F32 KV cache: llama.cpp's default F16 one rounds K/V on top of the quantized kernels' own
    # rounding (measured: 97.9% instead of 98.4% top-1 agreement); the weights are the subject here.
    yield engine, open_llama(smollm2_gguf, n_ctx=1024, f32_kv=True, threads=threads)
    torch.set_num_threads(before)


def _texts() -> list[str]:
    return [
        f"{SYSTEM}<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n{answer}<|im_end|>\n"
        for question, answer in CONVERSATIONS
    ]


def test_teacher_forced_top1_agrees_with_llama_cpp(smollm2_both):
    engine, llm = smollm2_both
    agree = total = 0
    # At each disagreement, how much each side preferred its own token over the other's, in logits.
    gaps: list[tuple[float, float]] = []
    for text in _texts():
        ids = llm.tokenize(text.encode(), add_bos=False, special=True)
        theirs, ours = llama_logits(llm, ids), paged_logits(engine, ids)
        top_theirs, top_ours = theirs.argmax(-1), ours.argmax(-1)
        agree += int((top_theirs == top_ours).sum())
        total += len(ids)
        for pos in np.flatnonzero(top_theirs != top_ours):
            a, b = top_theirs[pos], top_ours[pos]
            gaps.append((float(theirs[pos, a] - theirs[pos, b]), float(ours[pos, b] - ours[pos, a])))
    largest = max((max(g) for g in gaps), default=0.0)
    print(f"\nSmolLM2 teacher forcing: top-1 agreement {agree}/{total} = {agree / total:.2%}, "
          f"{len(gaps)} disagreements, largest logit gap {largest:.3f}")  # fmt: skip
    assert total >= 1000
    assert agree / total >= 0.98
    # Every disagreement a near-tie: both sides had the two tokens within a fraction of a logit (the
    # logits themselves differ by ~0.75 at the median position: llama.cpp rounds activations to 8 bits).
    assert all(theirs_gap < 0.5 and ours_gap < 1.0 for theirs_gap, ours_gap in gaps), gaps


def test_capital_of_france_on_both(smollm2_gguf: Path, tmp_path_factory):
    """The product path on both: one server, the same GGUF on llama.cpp and on the paged engine.

    Measured on this machine (llama-cpp-python 0.3.36, AVX2): llama.cpp's first token is a near-tie,
    "L" 24.91 vs "The" 24.56 (its 8-bit activations), and it answers in French; the engine's float32
    arithmetic on the same dequantized weights says "The capital of France is Paris.". So: the engine's
    answer is the right one, and the two answers are the same up to a token where llama.cpp's own top two
    were within half a logit, the engine's choice being llama.cpp's second."""
    engine = {"max_num_seqs": 4, "max_num_batched_tokens": 512, "cpu_kv_cache_gib": 0.05, "dtype": "float32"}
    common = {"path": str(smollm2_gguf), "preload": True, "context_length": 2048}
    models = [
        {"name": "dev", "backend": "llamacpp", **common},
        {"name": "prod", "backend": "paged", "engine": engine, **common},
    ]
    server = start_server({"profiles": {"dev": {"models": models}}}, tmp_path_factory.mktemp("smollm2"))
    try:
        client = server.openai()
        question = [{"role": "user", "content": "What is the capital of France?"}]
        dev, prod = (
            client.chat.completions.create(
                model=m, messages=question, max_tokens=24, temperature=0, logprobs=True, top_logprobs=2
            ).choices[0]
            for m in ("dev", "prod")
        )
    finally:
        server.stop()
    assert prod.message.content == "The capital of France is Paris." and prod.finish_reason == "stop"
    dev_tokens, prod_tokens = dev.logprobs.content, prod.logprobs.content
    same = 0
    while same < min(len(dev_tokens), len(prod_tokens)) and dev_tokens[same].token == prod_tokens[same].token:
        same += 1
    if dev.message.content == prod.message.content:
        return
    print(f"\ndev (llama.cpp) answered {dev.message.content!r}, diverging at token {same}")
    assert same < len(dev_tokens)
    top = {alt.token: alt.logprob for alt in dev_tokens[same].top_logprobs}
    assert prod_tokens[same].token in top, top  # the engine's choice was llama.cpp's second
    assert dev_tokens[same].logprob - top[prod_tokens[same].token] < 0.5, top  # ... by less than half a logit
