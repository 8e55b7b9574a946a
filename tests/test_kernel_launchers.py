"""Input validation of the paged-KV kernel launchers, references and Triton alike (validation runs before
any launch, so no GPU or interpreter is needed)."""

from __future__ import annotations

import pytest
import torch

from kernels.reference import paged_attention_decode_ref, paged_attention_prefill_ref, write_kv_cache_ref
from tests.kernel_support import HAS_TRITON, decode_inputs, prefill_inputs


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
