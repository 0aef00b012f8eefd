"""Several patched copies of one model, sharing its weights, at once: what benchmarks/bench.py relies on to time
policies interleaved in one process. Each copy follows its own plan; the original stays unpatched."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from conftest import plans_for
from reference import reference_logits
from test_matrix import TOL, ids, max_err, run_chunks

import zigzag_attn as zz

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_models import policy_models  # noqa: E402


@torch.no_grad()
def test_patched_copies_share_weights_and_coexist(family_model):
    _, model = family_model
    x = ids(40, seed=11)
    before = model(input_ids=x).logits
    plans = plans_for(model)
    models = policy_models(model, {"full": None, **plans}, decode_backend="auto")
    assert models["full"] is model
    for name in plans:
        copy = models[name]
        assert copy is not model
        for (k, a), (_, b) in zip(model.named_parameters(), copy.named_parameters(), strict=True):
            assert a.data_ptr() == b.data_ptr(), k  # one copy of the weights
    refs = {name: reference_logits(model, plan, x) for name, plan in plans.items()}
    for _ in range(2):  # alternate between the copies, as interleaved rounds do
        for name in plans:
            out, _ = run_chunks(models[name], x, [7] + [1] * 33)
            assert max_err(out, refs[name]) <= TOL, name
        assert torch.equal(model(input_ids=x).logits, before)
    for name in plans:
        zz.unpatch(models[name])
