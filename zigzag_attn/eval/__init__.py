"""Evaluation: how much long-context retrieval and perplexity a plan keeps, against baselines at equal KV budget.

    from zigzag_attn.eval import evaluate, policies, plots
    pols = policies(model, {"mine": plan}, n_random=5, with_duo=True)   # full, streaming, mine, 5 random, duo
    results = evaluate(model, tok, pols, task="niah", lengths=(2048, 4096), depths=5)
    print(results.table()); plots.heatmap(results, "niah.png"); plots.budget_plot(results, "budget.png")

Tasks (`tasks.TASKS`): niah, passkey, and RULER-style multikey, multivalue, multiquery, vartrack, commonwords; each
prompt is scored by one teacher-forced forward (`zigzag_attn.profile.measure`). `ppl` computes perplexity in bounded
memory.
The CLI is `zigzag-attn eval ...` (`zigzag_attn/cli/eval.py`).
"""

from .policies import FAMILIES, Policy, all_streaming, duo, full, given, policies, random_sets
from .ppl import Perplexity, documents, ppl
from .run import Results, Row, evaluate
from .tasks import (
    DEPTH_TASKS,
    TASKS,
    common_words,
    make,
    multikey_niah,
    multiquery,
    multivalue,
    niah,
    passkey,
    variable_tracking,
)

__all__ = ["DEPTH_TASKS", "FAMILIES", "TASKS", "Perplexity", "Policy", "Results", "Row", "all_streaming",
           "common_words", "documents", "duo", "evaluate", "full", "given", "make", "multikey_niah", "multiquery",
           "multivalue", "niah", "passkey", "policies", "ppl", "random_sets", "variable_tracking"]
