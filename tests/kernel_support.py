"""Shared helpers of the paged-KV kernel tests (tests/test_kernel_*.py, tests/test_kernels_triton.py): random
paged caches, naive dense attention, tolerances, and where the Triton tests may run (TRITON_DEVICES; the CPU
interpreter child run that TANDEM_KERNELS_TEST_CHILD=1 marks is run_triton_cases_interpreted, also used by
tests/test_kernels_lora.py).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import torch

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


def run_triton_cases_interpreted(test_file: str, what: str) -> None:
    """Run test_file's test_triton_vs_ref_* cases on CPU under TRITON_INTERPRET=1 in a fresh process (the
    interpreter must be chosen before triton is imported); fail unless they all ran and passed."""
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, TRITON_INTERPRET="1", TANDEM_KERNELS_TEST_CHILD="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
    env.pop("TANDEM_FORCE_TRITON", None)
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        test_file,
        "-q",
        "-x",
        "-p",
        "no:cacheprovider",
        "-k",
        "triton_vs_ref",
    ]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=240)
    report = proc.stdout[-6000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, f"interpreted Triton {what} failed:\n{report}"
    assert " passed" in proc.stdout and " skipped" not in proc.stdout.splitlines()[-1], report
