"""Paged-KV kernels: references vs naive dense attention, Triton vs references, launcher validation.

Triton on CPU needs TRITON_INTERPRET=1 *before* triton is imported (triton.jit reads it when the kernel
modules are imported), which cannot be guaranteed once the whole suite shares one process. So the
Triton-vs-reference tests (named test_triton_vs_ref_*) run on CUDA in-process when a GPU is present, and
on CPU through test_triton_kernels_in_cpu_interpreter, which re-runs just them in a child pytest with
the interpreter enabled (TANDEM_KERNELS_TEST_CHILD=1 marks that child).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import kernels
from kernels.reference import paged_attention_decode_ref, paged_attention_prefill_ref, write_kv_cache_ref

CHILD = os.environ.get("TANDEM_KERNELS_TEST_CHILD") == "1"
HAS_TRITON = importlib.util.find_spec("triton") is not None
# The child process only runs the interpreter on CPU; the parent runs real kernels on CUDA if present.
TRITON_DEVICES = ["cpu"] if CHILD else (["cuda"] if torch.cuda.is_available() and HAS_TRITON else [])
BLOCK_SIZE = 16
TOL = {torch.float32: 1e-4, torch.float16: 3e-3, torch.bfloat16: 3e-2}


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class Paged:
    """A random paged cache holding per-sequence dense K/V at shuffled, non-contiguous blocks."""

    def __init__(self, ctx: list[int], num_kv_heads: int, head_dim: int, dtype: torch.dtype, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        need = [cdiv(c, BLOCK_SIZE) for c in ctx]
        num_blocks = sum(need) + 3  # spare blocks stay random garbage that must never be read
        shape = (num_blocks, BLOCK_SIZE, num_kv_heads, head_dim)
        self.k_cache = torch.randn(shape, generator=g).to(dtype)
        self.v_cache = torch.randn(shape, generator=g).to(dtype)
        perm = torch.randperm(num_blocks, generator=g).tolist()
        # One spare column of -1: entries past a sequence's blocks must never be dereferenced.
        self.block_tables = torch.full((len(ctx), max(need, default=0) + 1), -1, dtype=torch.int32)
        self.dense_k: list[torch.Tensor] = []
        self.dense_v: list[torch.Tensor] = []
        for b, c in enumerate(ctx):
            ids, perm = perm[: need[b]], perm[need[b] :]
            self.block_tables[b, : need[b]] = torch.tensor(ids, dtype=torch.int32)
            k = torch.randn(c, num_kv_heads, head_dim, generator=g).to(dtype)
            v = torch.randn(c, num_kv_heads, head_dim, generator=g).to(dtype)
            for pos in range(c):  # naive un-paged -> paged placement, independent of write_kv_cache
                self.k_cache[ids[pos // BLOCK_SIZE], pos % BLOCK_SIZE] = k[pos]
                self.v_cache[ids[pos // BLOCK_SIZE], pos % BLOCK_SIZE] = v[pos]
            self.dense_k.append(k)
            self.dense_v.append(v)
        self.context_lens = torch.tensor(ctx, dtype=torch.int32)

    def to(self, device: str) -> Paged:
        for name in ("k_cache", "v_cache", "block_tables", "context_lens"):
            setattr(self, name, getattr(self, name).to(device))
        return self


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: list[int], scale: float):
    """q [n, H, D] at absolute positions, dense k/v [L, Hkv, D]; float64, one token at a time."""
    group = q.shape[1] // k.shape[1]
    k = k.double().repeat_interleave(group, dim=1)
    v = v.double().repeat_interleave(group, dim=1)
    out = torch.zeros(q.shape, dtype=torch.float64)
    for i, pos in enumerate(positions):
        s = torch.einsum("hd,lhd->hl", q[i].double(), k[: pos + 1]) * scale
        out[i] = torch.einsum("hl,lhd->hd", torch.softmax(s, dim=-1), v[: pos + 1])
    return out


def decode_inputs(ctx, num_kv_heads, group, head_dim, dtype, seed=0):
    paged = Paged(ctx, num_kv_heads, head_dim, dtype, seed)
    q = torch.randn(
        len(ctx), num_kv_heads * group, head_dim, generator=torch.Generator().manual_seed(seed + 1)
    )
    return paged, q.to(dtype)


def prefill_inputs(ctx, q_lens, num_kv_heads, group, head_dim, dtype, seed=0):
    paged = Paged(ctx, num_kv_heads, head_dim, dtype, seed)
    cu = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
    gen = torch.Generator().manual_seed(seed + 1)
    q = torch.randn(sum(q_lens), num_kv_heads * group, head_dim, generator=gen).to(dtype)
    return paged, q, cu


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    torch.testing.assert_close(actual.float().cpu(), expected.float().cpu(), atol=TOL[dtype], rtol=TOL[dtype])


# ---------------------------------------------------------------- references vs naive dense attention

DECODE_CASES = [  # (context_lens, num_kv_heads, group, head_dim, dtype)
    ([1, 16, 17, 45], 2, 1, 16, torch.float32),
    ([5, 33, 64, 0], 2, 2, 32, torch.float32),  # 0 = padded batch entry -> zeros
    ([70, 3], 1, 4, 64, torch.bfloat16),
    ([20, 31], 2, 3, 24, torch.float16),  # non-power-of-two group and head_dim
]
PREFILL_CASES = [  # (context_lens, q_lens, num_kv_heads, group, head_dim, dtype)
    ([20, 37], [20, 37], 2, 1, 16, torch.float32),  # plain prefill from an empty cache
    ([40, 17, 50, 9], [7, 1, 20, 9], 2, 2, 32, torch.float32),  # chunks over cached prefixes, q_len 1
    ([33, 12, 5], [33, 0, 2], 1, 4, 64, torch.bfloat16),  # a sequence with no new tokens
    ([29], [13], 2, 3, 24, torch.float16),
]


@pytest.mark.parametrize("ctx,num_kv_heads,group,head_dim,dtype", DECODE_CASES)
def test_decode_reference_matches_naive(ctx, num_kv_heads, group, head_dim, dtype):
    paged, q = decode_inputs(ctx, num_kv_heads, group, head_dim, dtype)
    out = paged_attention_decode_ref(
        q, paged.k_cache, paged.v_cache, paged.block_tables, paged.context_lens, 0.3
    )
    for b, c in enumerate(ctx):
        expected = (
            torch.zeros_like(q[b : b + 1], dtype=torch.float64)
            if c == 0
            else naive_attention(q[b : b + 1], paged.dense_k[b], paged.dense_v[b], [c - 1], 0.3)
        )
        assert_close(out[b : b + 1], expected, dtype)


@pytest.mark.parametrize("ctx,q_lens,num_kv_heads,group,head_dim,dtype", PREFILL_CASES)
def test_prefill_reference_matches_naive(ctx, q_lens, num_kv_heads, group, head_dim, dtype):
    paged, q, cu = prefill_inputs(ctx, q_lens, num_kv_heads, group, head_dim, dtype)
    out = paged_attention_prefill_ref(
        q, paged.k_cache, paged.v_cache, paged.block_tables, cu, paged.context_lens, 0.2
    )
    for b, (c, n) in enumerate(zip(ctx, q_lens, strict=True)):
        rows = slice(int(cu[b]), int(cu[b + 1]))
        expected = naive_attention(q[rows], paged.dense_k[b], paged.dense_v[b], list(range(c - n, c)), 0.2)
        assert_close(out[rows], expected, dtype)


def test_write_reference_matches_naive_and_skips_padding():
    paged = Paged([0], 2, 16, torch.float32)
    k_cache, v_cache = paged.k_cache.clone(), paged.v_cache.clone()
    key, value = torch.randn(6, 2, 16), torch.randn(6, 2, 16)
    slots = torch.tensor([3, -1, 40, 17, -1, 0])
    write_kv_cache_ref(key, value, k_cache, v_cache, slots)
    expected_k, expected_v = paged.k_cache.clone().view(-1, 2, 16), paged.v_cache.clone().view(-1, 2, 16)
    for t, slot in enumerate(slots.tolist()):
        if slot >= 0:
            expected_k[slot], expected_v[slot] = key[t], value[t]
    assert torch.equal(k_cache.view(-1, 2, 16), expected_k)
    assert torch.equal(v_cache.view(-1, 2, 16), expected_v)


def test_public_api_uses_reference_on_cpu(monkeypatch):
    monkeypatch.delenv("TANDEM_FORCE_TRITON", raising=False)
    paged, q = decode_inputs([9, 30], 2, 2, 16, torch.float32)
    args = (paged.k_cache, paged.v_cache, paged.block_tables, paged.context_lens, 0.25)
    assert torch.equal(kernels.paged_attention_decode(q, *args), paged_attention_decode_ref(q, *args))


# ---------------------------------------------------------------- Triton vs references

needs_triton_device = pytest.mark.skipif(
    not TRITON_DEVICES,
    reason="no CUDA here; the CPU interpreter run is test_triton_kernels_in_cpu_interpreter",
)
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@needs_triton_device
@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_kv_heads,head_dim", [(2, 16), (8, 64)])
def test_triton_vs_ref_write_kv_cache(device, dtype, num_kv_heads, head_dim):
    from kernels.kv_cache import write_kv_cache_triton

    paged = Paged([0], num_kv_heads, head_dim, dtype).to(device)
    # K and V as strided slices of one fused qkv projection, as the engine produces them.
    qkv = torch.randn(7, 3 * num_kv_heads, head_dim).to(dtype).to(device)
    key, value = qkv[:, num_kv_heads : 2 * num_kv_heads], qkv[:, 2 * num_kv_heads :]
    slots = torch.tensor([5, -1, 33, 16, 47, -1, 0], device=device)
    expected_k, expected_v = paged.k_cache.clone(), paged.v_cache.clone()
    write_kv_cache_ref(key, value, expected_k, expected_v, slots)
    write_kv_cache_triton(key, value, paged.k_cache, paged.v_cache, slots)
    assert torch.equal(paged.k_cache, expected_k)
    assert torch.equal(paged.v_cache, expected_v)


TRITON_DECODE_CASES = [  # (context_lens, num_kv_heads, group, head_dim, launcher kwargs)
    ([1, 16, 17, 45], 2, 1, 16, {}),
    ([5, 33, 64, 0], 2, 2, 32, {"split": True, "partition_size": 32, "block_n": 16}),
    ([70, 3], 1, 4, 64, {"split": False, "block_n": 16}),
    ([20, 31, 49], 2, 3, 24, {"split": True, "partition_size": 16, "block_n": 16}),
]


@needs_triton_device
@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ctx,num_kv_heads,group,head_dim,kwargs", TRITON_DECODE_CASES)
def test_triton_vs_ref_decode(device, dtype, ctx, num_kv_heads, group, head_dim, kwargs):
    from kernels.paged_attention import paged_attention_decode_triton

    paged, q = decode_inputs(ctx, num_kv_heads, group, head_dim, dtype, seed=len(ctx))
    paged.to(device)
    q = q.to(device)
    args = (paged.k_cache, paged.v_cache, paged.block_tables, paged.context_lens, head_dim**-0.5)
    out = paged_attention_decode_triton(q, *args, **kwargs)
    assert out.shape == q.shape and out.dtype == dtype
    assert_close(out, paged_attention_decode_ref(q, *args), dtype)


TRITON_PREFILL_CASES = [  # (context_lens, q_lens, num_kv_heads, group, head_dim, launcher kwargs)
    ([20, 37], [20, 37], 2, 1, 16, {"block_m": 16, "block_n": 16}),
    ([40, 17, 50, 9], [7, 1, 20, 9], 2, 2, 32, {"block_m": 16, "block_n": 16}),
    ([33, 12, 5], [33, 0, 2], 1, 4, 64, {}),
    ([29, 64], [13, 1], 2, 3, 24, {"block_m": 16, "block_n": 32}),
]


@needs_triton_device
@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ctx,q_lens,num_kv_heads,group,head_dim,kwargs", TRITON_PREFILL_CASES)
def test_triton_vs_ref_prefill(device, dtype, ctx, q_lens, num_kv_heads, group, head_dim, kwargs):
    from kernels.paged_attention import paged_attention_prefill_triton

    paged, q, cu = prefill_inputs(ctx, q_lens, num_kv_heads, group, head_dim, dtype, seed=len(ctx))
    paged.to(device)
    q, cu = q.to(device), cu.to(device)
    args = (paged.k_cache, paged.v_cache, paged.block_tables, cu, paged.context_lens, head_dim**-0.5)
    out = paged_attention_prefill_triton(q, *args, **kwargs)
    assert out.shape == q.shape and out.dtype == dtype
    assert_close(out, paged_attention_prefill_ref(q, *args), dtype)


@needs_triton_device
@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_triton_vs_ref_public_api_end_to_end(device, monkeypatch):
    """write -> prefill -> write -> decode through the dispatching API, like one engine step pair."""
    if device == "cpu":
        monkeypatch.setenv("TANDEM_FORCE_TRITON", "1")
    dtype, num_kv_heads, head_dim, group = torch.float16, 2, 32, 2
    gen = torch.Generator().manual_seed(7)
    caches = [
        torch.zeros(6, BLOCK_SIZE, num_kv_heads, head_dim, dtype=dtype, device=device) for _ in range(4)
    ]
    tables = torch.tensor([[4, 1, 3], [0, 5, -1]], dtype=torch.int32, device=device)
    ctx = [19, 5]  # whole prompts: q_len == context_len
    slots = [
        int(tables[b, p // BLOCK_SIZE]) * BLOCK_SIZE + p % BLOCK_SIZE for b in range(2) for p in range(ctx[b])
    ]

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(dtype).to(device)

    k, v, q = rand(24, num_kv_heads, head_dim), rand(24, num_kv_heads, head_dim), rand(24, 4, head_dim)
    slot_t = torch.tensor(slots, device=device)
    cu = torch.tensor([0, 19, 24], dtype=torch.int32, device=device)
    lens = torch.tensor(ctx, dtype=torch.int32, device=device)
    kernels.write_kv_cache(k, v, caches[0], caches[1], slot_t)
    write_kv_cache_ref(k, v, caches[2], caches[3], slot_t)
    out = kernels.paged_attention_prefill(q, caches[0], caches[1], tables, cu, lens, 0.2)
    assert_close(out, paged_attention_prefill_ref(q, caches[2], caches[3], tables, cu, lens, 0.2), dtype)
    # Decode step: one new token each at positions 19 and 5 (plus a padded batch slot -1), then attend.
    new_slots = torch.tensor([1 * BLOCK_SIZE + 3, 0 * BLOCK_SIZE + 5, -1], device=device)
    k1, v1 = rand(3, num_kv_heads, head_dim), rand(3, num_kv_heads, head_dim)
    kernels.write_kv_cache(k1, v1, caches[0], caches[1], new_slots)
    write_kv_cache_ref(k1, v1, caches[2], caches[3], new_slots)
    assert torch.equal(caches[0], caches[2]) and torch.equal(caches[1], caches[3])
    qd, lens = rand(2, num_kv_heads * group, head_dim), lens + 1
    out = kernels.paged_attention_decode(qd, caches[0], caches[1], tables, lens, 0.2)
    assert_close(out, paged_attention_decode_ref(qd, caches[2], caches[3], tables, lens, 0.2), dtype)


@pytest.mark.skipif(CHILD, reason="this is the child run")
@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed: only the torch references are available")
def test_triton_kernels_in_cpu_interpreter():
    """Run every test_triton_vs_ref_* case on CPU under TRITON_INTERPRET=1 in a fresh process."""
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, TRITON_INTERPRET="1", TANDEM_KERNELS_TEST_CHILD="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
    env.pop("TANDEM_FORCE_TRITON", None)
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        __file__,
        "-q",
        "-x",
        "-p",
        "no:cacheprovider",
        "-k",
        "triton_vs_ref",
    ]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=240)
    report = proc.stdout[-6000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, f"interpreted Triton tests failed:\n{report}"
    assert " passed" in proc.stdout and " skipped" not in proc.stdout.splitlines()[-1], report


# ---------------------------------------------------------------- launcher validation


def _valid_args() -> dict:
    paged, q, cu = prefill_inputs([20, 9], [4, 9], 2, 2, 16, torch.float16)
    key = torch.randn(3, 2, 16).half()
    return {
        "query": q,
        "decode_query": q[:2],
        "key": key,
        "value": key.clone(),
        "k_cache": paged.k_cache,
        "v_cache": paged.v_cache,
        "slot_mapping": torch.tensor([0, 1, -1]),
        "block_tables": paged.block_tables,
        "cu_query_lens": cu,
        "context_lens": paged.context_lens,
        "scale": 0.25,
    }


BAD_INPUTS = {  # name -> (kernel it breaks, replacements, expected message fragment)
    "query dtype": ("prefill", {"query": lambda a: a["query"].float()}, "query dtype"),
    "heads not divisible": ("prefill", {"query": lambda a: a["query"][:, :3]}, "not a multiple"),
    "head_dim mismatch": ("prefill", {"query": lambda a: a["query"][..., :8].contiguous()}, "head_dim"),
    "strided head_dim": (
        "prefill",
        {"query": lambda a: a["query"].transpose(1, 2).contiguous().transpose(1, 2)},
        "contiguous last",
    ),
    "block_tables int64": (
        "prefill",
        {"block_tables": lambda a: a["block_tables"].long()},
        "block_tables must be",
    ),
    "context_lens int64": (
        "decode",
        {"context_lens": lambda a: a["context_lens"].long()},
        "context_lens must be",
    ),
    "context_lens length": ("decode", {"context_lens": lambda a: a["context_lens"][:1]}, "context_lens has"),
    "cu_query_lens length": (
        "prefill",
        {"cu_query_lens": lambda a: a["cu_query_lens"][:2]},
        r"num_seqs \+ 1",
    ),
    "decode rows": ("decode", {"decode_query": lambda a: a["query"]}, "one token each"),
    "cache dims": ("decode", {"k_cache": lambda a: a["k_cache"][0]}, "k_cache must be"),
    "cache shapes differ": ("decode", {"v_cache": lambda a: a["v_cache"][:-1]}, "v_cache shape"),
    "cache dtypes differ": ("decode", {"v_cache": lambda a: a["v_cache"].float()}, "v_cache dtype"),
    "cache dtype": (
        "write",
        {f: (lambda a, f=f: a[f].to(torch.int8)) for f in ("k_cache", "v_cache")},
        "cache dtype",
    ),
    "cache not contiguous": (
        "decode",
        {f: (lambda a, f=f: a[f].transpose(0, 1)) for f in ("k_cache", "v_cache")},
        "contiguous",
    ),
    "scale": ("decode", {"scale": lambda a: -1.0}, "scale"),
    "slot_mapping int32": (
        "write",
        {"slot_mapping": lambda a: a["slot_mapping"].int()},
        "slot_mapping must be",
    ),
    "slot_mapping length": ("write", {"slot_mapping": lambda a: a["slot_mapping"][:2]}, "slot_mapping has"),
    "value tokens": ("write", {"value": lambda a: a["value"][:2]}, "value has"),
    "key heads": ("write", {"key": lambda a: a["key"][:, :1]}, "heads"),
}


def _call(fns: dict, kind: str, a: dict):
    if kind == "write":
        return fns["write"](a["key"], a["value"], a["k_cache"], a["v_cache"], a["slot_mapping"])
    if kind == "decode":
        return fns["decode"](
            a["decode_query"], a["k_cache"], a["v_cache"], a["block_tables"], a["context_lens"], a["scale"]
        )
    return fns["prefill"](
        a["query"],
        a["k_cache"],
        a["v_cache"],
        a["block_tables"],
        a["cu_query_lens"],
        a["context_lens"],
        a["scale"],
    )


def _implementations() -> list:
    impls = [
        pytest.param(
            {
                "write": write_kv_cache_ref,
                "decode": paged_attention_decode_ref,
                "prefill": paged_attention_prefill_ref,
            },
            id="reference",
        )
    ]
    if HAS_TRITON:  # validation runs before any launch, so CPU tensors are fine without the interpreter
        from kernels.kv_cache import write_kv_cache_triton
        from kernels.paged_attention import paged_attention_decode_triton, paged_attention_prefill_triton

        impls.append(
            pytest.param(
                {
                    "write": write_kv_cache_triton,
                    "decode": paged_attention_decode_triton,
                    "prefill": paged_attention_prefill_triton,
                },
                id="triton",
            )
        )
    return impls


@pytest.mark.parametrize("fns", _implementations())
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_launchers_reject_bad_inputs(fns, case):
    kind, replace, message = BAD_INPUTS[case]
    args = _valid_args()
    for name, make in replace.items():
        args[name] = make(args)
    with pytest.raises(ValueError, match=message):
        _call(fns, kind, args)


def test_valid_inputs_pass_validation():
    args = _valid_args()
    fns = {
        "write": write_kv_cache_ref,
        "decode": paged_attention_decode_ref,
        "prefill": paged_attention_prefill_ref,
    }
    for kind in ("write", "decode", "prefill"):
        _call(fns, kind, args)


def test_reference_rejects_too_short_block_table():
    paged, q = decode_inputs([40], 1, 1, 16, torch.float32)
    with pytest.raises(ValueError, match="blocks"):
        paged_attention_decode_ref(
            q, paged.k_cache, paged.v_cache, paged.block_tables[:, :1], paged.context_lens, 1.0
        )


# ---------------------------------------------------------------- GPU compile check without a GPU


def _sm90_compile(fn, signature: dict, meta: dict, expect_mma: bool = False) -> None:
    """Compile a Triton kernel to a cubin for sm_90 (no GPU needed); fail on register spills."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    meta = dict(meta)
    options = {k: meta.pop(k) for k in ("num_warps", "num_stages", "enable_fp_fusion") if k in meta}
    sig = {n: "constexpr" if n in meta else signature.get(n, "i32") for n in fn.arg_names}
    # Like the JIT specialization of a real launch: pointers and non-table strides are multiples of 16.
    attrs = {
        (i,): [["tt.divisibility", 16]]
        for i, n in enumerate(fn.arg_names)
        if n not in meta and (sig[n].startswith("*") or (n.startswith("stride") and n != "stride_bt"))
    }
    src = ASTSource(fn, sig, constexprs=meta, attrs=attrs)
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)
    if expect_mma:  # tl.dot must lower to tensor-core instructions (mma.sync / wgmma)
        assert "mma" in kernel.asm["ptx"], f"{fn.__name__} does not use tensor cores"
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if cuobjdump.exists():
        cubin = Path(os.environ.get("TMPDIR", "/tmp")) / f"tandem-{os.getpid()}-{fn.__name__}.cubin"
        cubin.write_bytes(kernel.asm["cubin"])
        usage = subprocess.run([cuobjdump, "--dump-resource-usage", cubin], capture_output=True, text=True)
        cubin.unlink()
        assert "STACK:0 " in usage.stdout, f"{fn.__name__} spills registers ({meta}): {usage.stdout}"


@pytest.mark.skipif(CHILD or not HAS_TRITON, reason="needs triton's JIT (not the interpreter)")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_triton_kernels_compile_for_sm90(dtype):
    """The interpreter accepts things real compilation rejects (and does not care about spills): compile
    the kernels with the launchers' real tile sizes for an H100 target."""
    from kernels.decode_kernels import _decode_kernel, _decode_reduce_kernel
    from kernels.kv_cache import _write_kv_kernel
    from kernels.paged_attention import decode_meta, prefill_meta
    from kernels.prefill_kernels import _prefill_kernel

    if not hasattr(_decode_kernel, "arg_names") or os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("TRITON_INTERPRET=1 replaced the JIT functions")
    ty = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32"}[dtype]
    sig = {n: ty for n in ("q_ptr", "k_cache_ptr", "v_cache_ptr", "out_ptr", "key_ptr", "value_ptr")}
    sig.update({n: "*i32" for n in ("block_tables_ptr", "context_lens_ptr", "cu_q_ptr")})
    sig.update(
        {n: "*fp32" for n in ("part_out_ptr", "part_m_ptr", "part_l_ptr")}, qk_scale="fp32", slot_ptr="*i64"
    )
    mma = dtype != torch.float32  # fp32 caches use exact ieee dots on FMA units
    for split in (False, True):
        _sm90_compile(_decode_kernel, sig, decode_meta(dtype, 4, 128, 16, split=split), mma)
    _sm90_compile(
        _decode_reduce_kernel,
        sig,
        dict(HEAD_DIM=128, BLOCK_D=128, PARTITION=512, PARTS_PAD=64, enable_fp_fusion=True),
    )
    _sm90_compile(_prefill_kernel, sig, prefill_meta(dtype, 4, 128, 16), mma)
    _sm90_compile(
        _write_kv_kernel,
        sig,
        dict(NUM_KV_HEADS=8, HEAD_DIM=128, BLOCK_H=8, BLOCK_D=128, enable_fp_fusion=True),
    )
