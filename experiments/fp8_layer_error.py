"""Which layers FP8 KV hurts: per layer, the error of attention with FP8 keys and values against exact attention.

    python experiments/fp8_layer_error.py --model qwen2.5-coder-0.5b --length 4096 \
        --out docs/results/fp8/layer_error_q05.json

One float32 forward over a held-out multi-key prompt records each layer's queries (the last --queries positions),
keys and values (after RoPE, as the cache holds them). For each layer, the attention output of those queries is
recomputed with the keys and/or values in the FP8 cache format (`runtime.quant.round_trip`) and compared with the
exact output: relative L2 error. Variants: `kv` (the format: both), `k` and `v` (one of them), and keys stored
minus a fixed per-(KV head, channel) offset: `k offset`, the median key of one calibration prompt (a pass-key
prompt on the calibration novels, one more forward), and, for models whose key projection has a bias (Qwen2),
`k bias`, that bias rotated by RoPE and averaged over the prompt's positions (no data needed). Softmax is invariant
to a shift of every key by the same vector, so an offset need never be added back; only the rounding changes. A
layer whose `kv` error is large is one where FP8 costs accuracy (docs/results.md).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from zigzag_attn.data.texts import load_text  # noqa: E402
from zigzag_attn.eval.tasks import make  # noqa: E402
from zigzag_attn.models import load  # noqa: E402
from zigzag_attn.runtime.quant import round_trip  # noqa: E402

NAME = "zz_record_qkv"


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention of the last `n` query rows. q `[1, heads, n, d]`, k/v `[1, kv_heads, T, d]`."""
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    t, n = k.shape[2], q.shape[2]
    logits = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    future = torch.arange(t)[None] > torch.arange(t - n, t)[:, None]
    return logits.masked_fill(future, float("-inf")).softmax(-1) @ v


def variants(offset: torch.Tensor | None, bias: torch.Tensor | None = None) -> dict:
    """name -> (keys, values) -> (keys, values) as attention would read them; offsets `[1, kv_heads, 1, head_dim]`."""
    out = {"kv": lambda k, v: (round_trip(k), round_trip(v)), "k": lambda k, v: (round_trip(k), v),
           "v": lambda k, v: (k, round_trip(v)), "k offset": lambda k, v: (round_trip(k - offset), round_trip(v))}
    if bias is not None:
        out["k bias"] = lambda k, v: (round_trip(k - bias), round_trip(v))
    return out


def rotated_bias(model, layer: int, tokens: int) -> torch.Tensor | None:
    """The key projection's bias of `layer` after RoPE, averaged over positions 0..tokens-1 `[1, kv_heads, 1, d]`;
    None where the projection has no bias."""
    attn = model.model.layers[layer].self_attn
    if getattr(attn.k_proj, "bias", None) is None:
        return None
    kv_heads, d = model.config.num_key_value_heads, attn.head_dim
    b = attn.k_proj.bias.detach().view(1, kv_heads, 1, d).expand(1, kv_heads, tokens, d)
    cos, sin = model.model.rotary_emb(b, torch.arange(tokens)[None])
    _, rotated = sys.modules[type(attn).__module__].apply_rotary_pos_emb(b, b, cos, sin)
    return rotated.mean(-2, keepdim=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a model alias, GGUF file or folder")
    ap.add_argument("--length", type=int, default=4096)
    ap.add_argument("--queries", type=int, default=64)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    model, tok = load(args.model, dtype=torch.float32)
    held: dict[int, tuple] = {}

    def record(module, query, key, value, attention_mask, **kw):
        held[module.layer_idx] = (query[:, :, -args.queries:].clone(), key.clone(), value.clone())
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kw)

    AttentionInterface.register(NAME, record)
    model.set_attn_implementation(NAME)
    calibration = make("passkey", tok, args.length, n=1, seed=args.seed, text=load_text(split="calibration"))[0]
    with torch.no_grad():
        model(calibration.input_ids[None], use_cache=False)
    offsets = {i: k.median(dim=-2, keepdim=True).values for i, (_, k, _) in held.items()}
    sample = make("multikey", tok, args.length, n=1, seed=args.seed, text=None)[0]  # the held-out novels
    start = time.perf_counter()
    with torch.no_grad():
        model(sample.input_ids[None], use_cache=False)
    print(f"{args.model}: one forward of {len(sample)} tokens in {time.perf_counter() - start:.0f} s")
    rows = []
    bias = {i: rotated_bias(model, i, len(sample)) for i in held}
    print("layer  " + "  ".join(f"{n:>9}" for n in variants(None, bias[0])))
    for i in sorted(held):
        q, k, v = held[i]
        exact = attend(q, k, v)
        err = {n: float((attend(q, *f(k, v)) - exact).norm() / exact.norm())
               for n, f in variants(offsets[i], bias[i]).items()}
        rows.append({"layer": i, **{n: round(e, 5) for n, e in err.items()}})
        print(f"{i:5d}  " + "  ".join(f"{e:9.4f}" for e in err.values()), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"model": args.model, "tokens": len(sample), "queries": args.queries,
                                        "task": "multikey", "seed": args.seed, "rows": rows,
                                        "command": "python " + " ".join(sys.argv)}, indent=1) + "\n")


if __name__ == "__main__":
    main()
