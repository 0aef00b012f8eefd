"""FP8 retrieval KV: the stored format, the cache layers that hold it, plan bookkeeping, and the fused decode kernel.

The attention paths (prefill, chunks, decode past the window, padding, beams, static and compiled) run in the shared
test matrix (conftest's `case`: "exclusive-fp8", "mixed-fp8") against the reference with the same quantisation."""

from __future__ import annotations

import importlib.util
import inspect
import sys

import pytest
import torch
from conftest import plans_for, tiny_model
from reference import fp8_round_trip, reference_logits
from test_matrix import TOL, ids, max_err, run_chunks
from transformers.cache_utils import CacheLayerMixin, DynamicLayer, StaticLayer

import zigzag_attn as zz
from zigzag_attn.runtime import fp8_decode
from zigzag_attn.runtime.quant import FP8, FP8Layer, QuantKV, StaticFP8Layer, dequantize, quantize


def test_format_round_trip_is_the_reference_format():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 50, 16, generator=g) * torch.logspace(-3, 2, 16)  # channels of very different sizes
    x[0, 0, 0] = 0  # an all-zero row keeps its zeros
    values, scale = quantize(x)
    assert values.dtype == FP8 and scale.dtype == torch.bfloat16 and scale.shape == (3, 2, 50, 1)
    back = dequantize(values, scale, torch.float32)
    assert torch.equal(back, fp8_round_trip(x))
    assert torch.equal(back[0, 0, 0], torch.zeros(16))
    rel = ((back - x).abs() / x.abs().amax(-1, keepdim=True).clamp_min(1e-30)).max()
    assert 0 < rel <= 2 ** -4  # e4m3: 3 mantissa bits, relative to the row's largest entry


def test_the_format_changes_the_outputs_far_beyond_the_matrix_tolerance():
    """The shared matrix checks FP8 plans at its usual tolerance: a runtime that kept 16-bit KV must fail there."""
    for family in ("llama", "gemma3_text"):
        model = tiny_model(family, kv_heads=4).double()
        for kind, plan in plans_for(model).items():
            x = ids(70, seed=3)
            effect = max_err(reference_logits(model, plan, x), reference_logits(model, plan.with_kv_dtype("fp8"), x))
            assert effect >= 10 * TOL, (family, kind, effect)


@torch.no_grad()
@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_a_forward_without_a_cache_sees_what_the_cache_would_store(family):
    """Teacher-forced scoring (`measure`, `use_cache=False`) must see the FP8 format too, or an evaluation of an
    FP8 plan would score 16-bit attention."""
    model = tiny_model(family, kv_heads=4).double()  # float64: see conftest's `case`
    x = ids(40, seed=5)
    for plan in plans_for(model).values():
        fp8 = plan.with_kv_dtype("fp8")
        ref = reference_logits(model, fp8, x)
        with zz.patched(model, fp8):
            without, with_cache = model(x, use_cache=False).logits, model(x, use_cache=True).logits
        assert max_err(without, ref) <= TOL and max_err(with_cache, ref) <= TOL
        assert max_err(reference_logits(model, plan, x), ref) > 10 * TOL  # the format does change these logits


@pytest.mark.parametrize("layer_class", [FP8Layer, StaticFP8Layer])
def test_every_base_method_touching_the_tensors_moves_the_scales_too(layer_class):
    """A transformers layer method that moves `keys`/`values` and is not overridden would leave the scales behind."""
    bases = [DynamicLayer if layer_class is FP8Layer else StaticLayer, CacheLayerMixin]
    touching = {name for base in bases for name, fn in vars(base).items()
                if callable(fn) and "self.keys" in inspect.getsource(fn) and not name.startswith("__")}
    harmless = {"get_seq_length", "update", "lazy_initialization", "crop"} if layer_class is StaticFP8Layer else \
        {"get_seq_length"}
    for name in sorted(touching - harmless):
        owner = next(c for c in layer_class.__mro__ if name in vars(c))
        assert owner.__module__ == "zigzag_attn.runtime.quant", f"{layer_class.__name__}.{name} comes from {owner}"


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_layers_store_fp8_and_hand_back_what_they_store(static):
    g = torch.Generator().manual_seed(1)
    k1, v1 = torch.randn(2, 3, 5, 16, generator=g), torch.randn(2, 3, 5, 16, generator=g)
    k2, v2 = torch.randn(2, 3, 1, 16, generator=g), torch.randn(2, 3, 1, 16, generator=g)
    layer = StaticFP8Layer(max_cache_len=8) if static else FP8Layer()
    layer.update(k1, v1)
    keys, values = layer.update(k2, v2)
    assert isinstance(keys, QuantKV) and keys.data.dtype == FP8 and keys.dtype == torch.float32
    n = 6
    want_k, want_v = fp8_round_trip(torch.cat([k1, k2], 2)), fp8_round_trip(torch.cat([v1, v2], 2))
    assert torch.equal(keys.dequantize()[:, :, :n], want_k) and torch.equal(values.dequantize()[:, :, :n], want_v)
    assert int(layer.get_seq_length()) == n
    beams = torch.tensor([1, 1])
    layer.reorder_cache(beams)
    keys, _ = layer.read()
    assert torch.equal(keys.dequantize()[0, :, :n], want_k[1]) and torch.equal(keys.dequantize()[1, :, :n], want_k[1])


def test_fp8_cache_holds_about_half_the_bytes_and_the_plan_says_so():
    model = tiny_model("llama", kv_heads=2, layers=4)
    info = zz.describe(model)
    plan = zz.Plan.from_layers(["retrieval"] * 4, sink=2, window=4, model=info)
    x = ids(64)
    sizes = {}
    for dtype in ("model", "fp8"):
        with zz.patched(model, plan.with_kv_dtype(dtype)):
            sizes[dtype] = zz.cache_of(model(x, use_cache=True)).nbytes()
    # float32 model: 4 bytes a value against 1 + 2 / head_dim (16) for FP8
    assert sizes["fp8"] == pytest.approx(sizes["model"] * (1 + 2 / 16) / 4)
    fp8 = plan.with_kv_dtype("fp8")
    assert fp8.kv_fraction(64) == pytest.approx((1 + 2 / info.head_dim) / 2)
    mixed = zz.Plan.from_layers(["retrieval", "streaming"] * 2, sink=2, window=4, model=info, kv_dtype="fp8")
    assert mixed.kv_fraction(64) == pytest.approx((fp8.retrieval_bytes() + 6 / 64) / 2)
    assert "retrieval KV fp8" in mixed.describe()


def test_plan_json_round_trip_and_old_files():
    model = tiny_model("llama")
    plan = plans_for(model)["mixed"].with_kv_dtype("fp8")
    again = zz.Plan.from_json(plan.to_json())
    assert again == plan and again.kv_dtype == "fp8"
    plain = plans_for(model)["mixed"].to_json()
    assert "kv_dtype" not in plain  # plans without FP8 are written as before
    assert zz.Plan.from_json(plain).kv_dtype == "model"
    with pytest.raises(ValueError, match="kv_dtype must be one of 'model', 'fp8'"):
        zz.Plan.from_json({**plain, "kv_dtype": "int4"})


def test_patch_refuses_the_kernel_where_it_cannot_run():
    model = tiny_model("llama")
    plan = plans_for(model)["exclusive"].with_kv_dtype("fp8")
    with pytest.raises(ValueError, match="fp8_backend='triton' cannot run here"):
        zz.patch(model, plan, fp8_backend="triton")
    with pytest.raises(ValueError, match="fp8_backend must be one of"):
        zz.patch(model, plan, fp8_backend="fast")
    assert zz.plan_of(model) is None  # refused before anything was patched


def test_patch_refuses_fp8_where_float8_cannot_be_stored(monkeypatch):
    patch_module = sys.modules["zigzag_attn.runtime.patch"]  # the package exports the function of that name
    monkeypatch.setattr(patch_module, "fp8_problem", lambda device: f"this torch build cannot store float8 on {device}")
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="stores retrieval KV in FP8, but this torch build cannot store float8"):
        zz.patch(model, plans_for(model)["exclusive"].with_kv_dtype("fp8"))


@torch.no_grad()
def test_generate_with_fp8_matches_its_reference_greedily():
    model = tiny_model("qwen2", kv_heads=2, layers=4).double()  # float64: see conftest's `case`
    plan = plans_for(model)["exclusive"].with_kv_dtype("fp8")
    prompt = ids(10, seed=4)
    zz.patch(model, plan)
    out = model.generate(prompt, max_new_tokens=20, min_new_tokens=20, do_sample=False)
    logits, _ = run_chunks(model, out, [out.shape[1]])
    zz.unpatch(model)
    ref = reference_logits(model, plan, out)
    assert max_err(logits, ref) <= TOL


needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                  reason="the fused kernel needs the triton package (run on CPU by its interpreter)")


@needs_triton
@pytest.mark.parametrize("b,h,kv,n,d", [(2, 12, 2, 300, 128), (1, 4, 2, 700, 64), (3, 14, 2, 129, 64)])
def test_fused_kernel_matches_a_float32_reference(b, h, kv, n, d):
    """The Triton kernel (on a CPU through Triton's interpreter, which conftest selects; float16: the interpreter's
    bfloat16 dot is wrong) against softmax(QK^T)V over the read-back values; padding and a row that sees nothing."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(n)
    q = torch.randn(b, h, 1, d, generator=g).half().to(device)
    k, v = torch.randn(b, kv, n, d, generator=g) * 3, torch.randn(b, kv, n, d, generator=g)
    k[..., 5] *= 40  # an outlier channel
    keys, values = (QuantKV(*quantize(t.to(device)), torch.float16) for t in (k, v))
    seen = torch.ones(b, 1, 1, n, dtype=torch.bool, device=device)
    seen[0, ..., :5] = False
    if b > 1:
        seen[1] = False
    fp8_decode.register()
    out = fp8_decode.fp8_decode(q, keys, values, fp8_decode.mask_bias(seen, n), scale=None)
    kr, vr = (x.dequantize().float().repeat_interleave(h // kv, 1) for x in (keys, values))
    scores = (q.float() @ kr.transpose(-1, -2)) * d ** -0.5
    ref = (scores.masked_fill(~seen, float("-inf")).softmax(-1).nan_to_num() @ vr).transpose(1, 2)
    live = [i for i in range(b) if i != 1]
    assert (out.float()[live] - ref[live]).norm() / ref[live].norm() < 1e-3
    if b > 1:
        assert not out.isnan().any() and out[1].abs().max() == 0  # the row that sees nothing: zeros, not NaN


@needs_triton
@pytest.mark.skipif(not torch.cuda.is_available(), reason="compiling the kernel's op needs CUDA (Triton's "
                    "interpreter cannot run under fake tensors)")
def test_the_kernel_call_is_one_op_in_a_compiled_graph():
    """torch.compile must take the fused kernel into the decode graph: a graph break there splits every decoder
    layer into a graph of its own, which recompiles per layer and per model until compilation gives up."""
    device = "cuda"
    fp8_decode.register()
    q = torch.randn(1, 4, 1, 64, dtype=torch.float16, device=device)
    keys, values = (QuantKV(*quantize(torch.randn(1, 2, 70, 64, device=device)), torch.float16) for _ in range(2))

    def step(q, kd, ks, vd, vs):
        return fp8_decode.fp8_decode(q * 2, QuantKV(kd, ks, torch.float16), QuantKV(vd, vs, torch.float16), None,
                                     scale=0.125) + 1

    explained = torch._dynamo.explain(step)(q, keys.data, keys.scale, values.data, values.scale)
    assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons


def test_kernel_problems_are_named():
    q = torch.zeros(1, 2, 1, 48, dtype=torch.bfloat16)
    if importlib.util.find_spec("triton") is None:
        assert fp8_decode.problem(q.dtype, 48) == "the triton package is not installed"
    else:
        assert "head_dim" in fp8_decode.problem(q.dtype, 48)
        assert "bfloat16 or float16" in fp8_decode.problem(torch.float32, 64)


def test_cli_kv_dtype(capsys, tiny_dir, tmp_path, monkeypatch):
    """`generate --kv-dtype fp8` runs the plan with FP8 retrieval KV; where float8 cannot be stored, `generate` and
    `eval` refuse before the model loads."""
    from test_cli import run
    from transformers import LlamaForCausalLM

    info = zz.describe(LlamaForCausalLM.from_pretrained(tiny_dir))
    path = zz.Plan.from_layers(["retrieval", "streaming", "streaming", "retrieval"], sink=4, window=8,
                               model=info).save(tmp_path / "plan.json")
    code, _, err = run(capsys, "generate", str(tiny_dir), "--plan", str(path), "--prompt", "Once upon a time",
                       "--max-new-tokens", "4", "--kv-dtype", "fp8", "--device", "cpu")
    assert code == 0 and "retrieval KV fp8" in err, err
    common = sys.modules["zigzag_attn.cli.common"]
    monkeypatch.setattr("zigzag_attn.runtime.quant.fp8_problem", lambda device: "no float8 here")
    for argv in (["generate", "no-such-model", "--plan", str(path), "--prompt", "hi", "--kv-dtype", "fp8"],
                 ["eval", "niah", "no-such-model", "--plan", str(path), "--kv-dtype", "fp8"]):
        code, _, err = run(capsys, *argv)
        assert code == 2 and "argument --kv-dtype: the plan stores retrieval KV in FP8, but no float8 here" in err, err
    assert common.with_kv_dtype(zz.Plan.load(path), None, "cpu").kv_dtype == "model"  # the plan's own dtype
