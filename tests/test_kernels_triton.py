"""Triton paged-KV kernels against the references, and their sm_90 compile check.

Triton on CPU needs TRITON_INTERPRET=1 *before* triton is imported (triton.jit reads it when the kernel
modules are imported), which cannot be guaranteed once the whole suite shares one process. So the
Triton-vs-reference tests (named test_triton_vs_ref_*) run on CUDA in-process when a GPU is present, and
on CPU through test_triton_kernels_in_cpu_interpreter, which re-runs just them (this file, -k triton_vs_ref)
in a child pytest with the interpreter enabled (TANDEM_KERNELS_TEST_CHILD=1 marks that child).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

import kernels
from kernels.reference import paged_attention_decode_ref, paged_attention_prefill_ref, write_kv_cache_ref
from tests.kernel_support import (
    BLOCK_SIZE,
    CHILD,
    HAS_TRITON,
    TRITON_DEVICES,
    Paged,
    assert_close,
    decode_inputs,
    prefill_inputs,
    run_triton_cases_interpreted,
)

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
    run_triton_cases_interpreted(__file__, "tests")


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
