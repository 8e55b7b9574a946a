"""The batched LoRA matmul: the torch reference against a naive per-token loop, the Triton kernel against the
reference (on CUDA in-process; on CPU in a child process under TRITON_INTERPRET=1, as in
tests/test_kernels_triton.py), and the launchers' shape checks."""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")

from kernels.lora_reference import add_lora_ref, slot_groups  # noqa: E402
from tests.kernel_support import (  # noqa: E402
    CHILD,
    HAS_TRITON,
    TOL,
    TRITON_DEVICES,
    assert_close,
    run_triton_cases_interpreted,
)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (in, shard sizes, rank, number of slots, token slots): fused q/k/v, gate/up, a plain linear; base rows -1.
CASES = [
    (32, (32, 16, 16), 8, 3, [0, -1, 2, 2, 1, -1, 0]),
    (48, (40, 40), 4, 2, [1, 1, 1, 0, -1]),
    (128, (96,), 16, 4, [3, -1, -1, 0, 2, 1, 1, 3, 0]),
    (24, (24,), 2, 1, [-1, -1]),  # a base-only batch: nothing changes
    (32, (32, 16, 16), 8, 2, [1, 1, 1, 1]),  # every row on one adapter
    (64, (64, 16, 16), 12, 2, [0] * 40 + [1] * 3),  # a long prefill chunk, a rank that is no power of two
]


def _inputs(in_features, shards, rank, num_slots, slots, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = sum(shards)
    x = torch.randn(len(slots), in_features, generator=g).to(dtype)
    y = torch.randn(len(slots), out, generator=g).to(dtype)
    a = (torch.randn(num_slots, len(shards) * rank, in_features, generator=g) * 0.2).to(dtype)
    b = (torch.randn(num_slots, out, rank, generator=g) * 0.2).to(dtype)
    starts = tuple(int(s) for s in torch.tensor((0, *shards[:-1])).cumsum(0))
    return y, x, a, b, torch.tensor(slots, dtype=torch.int32), starts


def _naive(y, x, a, b, slots, starts):
    """float64, one token and one shard at a time, straight from the layout's definition."""
    out = y.double().clone()
    rank = b.shape[2]
    bounds = (*starts, y.shape[1])
    for t, slot in enumerate(slots.tolist()):
        if slot < 0:
            continue
        for s in range(len(starts)):
            a_s = a[slot, s * rank : (s + 1) * rank].double()  # [rank, in]
            b_s = b[slot, bounds[s] : bounds[s + 1]].double()  # [cols, rank]
            out[t, bounds[s] : bounds[s + 1]] += b_s @ (a_s @ x[t].double())
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("in_features,shards,rank,num_slots,slots", CASES)
def test_reference_vs_naive(dtype, in_features, shards, rank, num_slots, slots):
    y, x, a, b, token_slots, starts = _inputs(in_features, shards, rank, num_slots, slots, dtype)
    expected = _naive(y, x, a, b, token_slots, starts)
    base_rows = token_slots < 0
    before = y.clone()
    add_lora_ref(y, x, a, b, token_slots, starts)
    assert torch.equal(y[base_rows], before[base_rows])
    torch.testing.assert_close(y.double(), expected, atol=4 * TOL[dtype], rtol=4 * TOL[dtype])
    # With the rows grouped beforehand (as the engine does once per step), the very same result.
    grouped = before.clone()
    add_lora_ref(grouped, x, a, b, token_slots, starts, slot_groups(token_slots))
    assert torch.equal(grouped, y)


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda args: args.update(slots=args["slots"].long()), "token_slots must be int32"),
        (lambda args: args.update(starts=(0, 40)), "shards of rank"),
        (lambda args: args.update(b=args["b"][:, :-1].contiguous()), "output rows"),
        (lambda args: args.update(x=args["x"].double()), "dtypes differ"),
        (lambda args: args.update(starts=(0, 10, 5)), "must increase"),
    ],
)
def test_reference_refuses_bad_shapes(change, message):
    y, x, a, b, slots, starts = _inputs(32, (32, 16, 16), 8, 3, [0, 1], torch.float32)
    args = dict(y=y, x=x, a=a, b=b, slots=slots, starts=starts)
    change(args)
    with pytest.raises(ValueError, match=message):
        add_lora_ref(args["y"], args["x"], args["a"], args["b"], args["slots"], args["starts"])


needs_triton_device = pytest.mark.skipif(
    not TRITON_DEVICES, reason="no CUDA here; the CPU interpreter run is test_lora_kernel_in_cpu_interpreter"
)


@needs_triton_device
@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("in_features,shards,rank,num_slots,slots", CASES)
def test_triton_vs_ref_lora(device, dtype, in_features, shards, rank, num_slots, slots):
    from kernels.lora import add_lora_triton

    y, x, a, b, token_slots, starts = _inputs(in_features, shards, rank, num_slots, slots, dtype, seed=1)
    expected = y.clone()
    add_lora_ref(expected, x, a, b, token_slots, starts)
    y, x, a, b, token_slots = (t.to(device) for t in (y, x, a, b, token_slots))
    add_lora_triton(y, x, a, b, token_slots, starts)
    assert_close(y, expected, dtype)


@needs_triton_device
@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_triton_vs_ref_lora_strided_rows(device):
    """x and y as row slices of wider tensors (a fused projection's output is split, then projected)."""
    from kernels.lora import add_lora_triton

    y, x, a, b, token_slots, starts = _inputs(32, (32, 16, 16), 8, 2, [1, 0, -1, 1], torch.float16)
    wide_x = torch.randn(4, 80).to(torch.float16)
    wide_x[:, 8:40] = x
    wide_y = torch.randn(4, 100).to(torch.float16)
    wide_y[:, 20:84] = y
    expected = y.clone()
    add_lora_ref(expected, x, a, b, token_slots, starts)
    wide_x, wide_y, a, b, token_slots = (t.to(device) for t in (wide_x, wide_y, a, b, token_slots))
    add_lora_triton(wide_y[:, 20:84], wide_x[:, 8:40], a, b, token_slots, starts)
    assert_close(wide_y[:, 20:84], expected, torch.float16)


@pytest.mark.skipif(CHILD, reason="this is the child run")
@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed: only the torch reference is available")
def test_lora_kernel_in_cpu_interpreter():
    """Run every test_triton_vs_ref_* case here on CPU under TRITON_INTERPRET=1 in a fresh process."""
    run_triton_cases_interpreted(__file__, "LoRA tests")


@pytest.mark.skipif(CHILD or not HAS_TRITON, reason="needs triton's JIT (not the interpreter)")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_lora_kernels_compile_for_sm90(dtype):
    """Compile both kernels for an H100 target with the launcher's tile sizes (8B shapes: rank 16)."""
    from kernels.lora import _lora_expand_kernel, _lora_shrink_kernel, lora_meta
    from tests.test_kernels_triton import _sm90_compile

    if not hasattr(_lora_shrink_kernel, "arg_names") or os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("TRITON_INTERPRET=1 replaced the JIT functions")
    ty = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32"}[dtype]
    sig = {"x_ptr": ty, "a_ptr": ty, "b_ptr": ty, "y_ptr": ty, "h_ptr": "*fp32", "slots_ptr": "*i32"}
    meta = lora_meta(16, 3)
    _sm90_compile(
        _lora_shrink_kernel,
        sig,
        dict(
            R_TOTAL=48, BLOCK_R=meta["BLOCK_R"], BLOCK_K=meta["BLOCK_K"], num_warps=4, enable_fp_fusion=True
        ),
    )
    _sm90_compile(
        _lora_expand_kernel,
        sig,
        dict(RANK=16, BLOCK_N=meta["BLOCK_N"], BLOCK_R=16, num_warps=4, enable_fp_fusion=True),
    )
