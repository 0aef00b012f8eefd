"""The models and plans the benchmarks time: the random-weight Llama-3-8B shape, the full / fullk / mixed / zigzag
plans at one KV budget (bench.py's docstring defines them), and one patched model per plan sharing one copy of the
weights."""

from __future__ import annotations

import copy
import itertools

from transformers import LlamaConfig

import zigzag_attn as zz

SINK, WINDOW = 64, 256


def llama3_8b(layers: int = 32, smoke: bool = False) -> LlamaConfig:
    size = dict(vocab_size=1000, hidden_size=256, intermediate_size=512) if smoke else \
        dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336)
    return LlamaConfig(**size, num_hidden_layers=layers, num_attention_heads=32, num_key_value_heads=8,
                       max_position_embeddings=1 << 21, rope_theta=500000.0, tie_word_embeddings=False,
                       bos_token_id=1, eos_token_id=None)


def plans(model, zigzag_plan: str | None = None) -> dict[str, zz.Plan | None]:
    """Half of the KV cache kept in both plans: mixed keeps half of every layer's KV heads, zigzag half of the
    layers (the odd ones stream, or the layers of `zigzag_plan`, a 50% plan file or shipped name); each also with
    FP8 retrieval KV ("-fp8": the fused decode kernel, fp8_backend="triton"; "-fp8-dq": dequantise + SDPA)."""
    info = zz.describe(model)
    half = info.num_kv_heads // 2
    mixed = [[h < half for h in range(info.num_kv_heads)] for _ in range(info.num_layers)]
    zigzag = ["streaming" if i % 2 else "retrieval" for i in range(info.num_layers)]
    if zigzag_plan:
        zigzag = list(zz.Plan.load(zigzag_plan).modes)
        if zigzag.count("retrieval") * 2 != info.num_layers:
            raise SystemExit(f"--zigzag-plan must keep half of the {info.num_layers} layers retrieval")
    out = {"full": None,
           "fullk": zz.Plan.from_layers(["retrieval"] * info.num_layers, sink=SINK, window=WINDOW, model=info),
           "mixed": zz.Plan.from_heads(mixed, sink=SINK, window=WINDOW, model=info),
           "zigzag": zz.Plan.from_layers(zigzag, sink=SINK, window=WINDOW, model=info)}
    # the same plans with FP8 retrieval KV: "-fp8" decodes with the fused kernel, "-fp8-dq" reads a 16-bit copy
    for name in ("fullk", "mixed", "zigzag"):
        out[f"{name}-fp8"] = out[f"{name}-fp8-dq"] = out[name].with_kv_dtype("fp8")
    return out


def policy_models(base, plans: dict[str, zz.Plan | None], decode_backend: str) -> dict:
    """One model per policy, all sharing `base`'s weights and buffers (only the module objects are new), each
    patched for its plan (`base` itself for the unpatched policy). Each has its own compiled call, so no policy
    waits for another to be unpatched and compiled again, and the compiled step can interleave policies."""
    shared = {id(t): t for t in itertools.chain(base.parameters(), base.buffers())}
    models = {}
    for policy, plan in plans.items():
        if plan is None:
            models[policy] = base
        else:
            fp8 = "dequantize" if policy.endswith("-dq") else "triton"
            models[policy] = zz.patch(copy.deepcopy(base, memo=dict(shared)), plan, decode_backend=decode_backend,
                                      fp8_backend=fp8)
    return models
