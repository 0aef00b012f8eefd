"""`Plan`: which layers (or KV heads) keep full attention and which stream with sink + window.

A plan is pure data: JSON in, JSON out, never pickle. It is layer-exclusive (ZigzagAttention) when
every layer is all-retrieval or all-streaming, and mixed (DuoAttention) when a layer has both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import jsonfile
from .model_info import ModelInfo, need

FORMAT = "zigzag-attn/plan"
VERSION = 1
RETRIEVAL, STREAMING, MIXED = "retrieval", "streaming", "mixed"
SHIPPED_DIR = Path(__file__).parent / "plans"
PLAN_FIELDS = {"format", "version", "sink", "window", "modes", "heads", "model", "provenance", "kv_dtype"}
KV_DTYPES = ("model", "fp8")  # how retrieval KV is stored: the model's dtype, or float8 e4m3 with per-token scales
FP8_SCALE_BYTES = 2  # one bfloat16 scale per token, KV head and K or V (runtime/quant.py)
PROVENANCE = "provenance (a JSON object of notes on how the plan was made)"
MAX_TOKENS = 2**31 - 1  # bound on sink and window: far past any context, small enough for position arithmetic


def check_kv_dtype(kv_dtype: Any) -> None:
    if kv_dtype not in KV_DTYPES:
        raise ValueError(f"kv_dtype must be one of {', '.join(map(repr, KV_DTYPES))} (how retrieval keys and values "
                         f"are stored); got {kv_dtype!r:.60}")


def check_sink_window(sink: Any, window: Any) -> None:
    if isinstance(sink, bool) or not isinstance(sink, int) or sink < 0:
        raise ValueError(f"sink must be an integer >= 0 (the number of first tokens every query sees); got {sink!r}")
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be an integer >= 1 (recent tokens each query sees, itself included); "
                         f"got {window!r}")
    if max(sink, window) > MAX_TOKENS:
        raise ValueError(f"sink and window must be at most {MAX_TOKENS} tokens; got sink={sink}, window={window}")


@dataclass(frozen=True)
class Plan:
    """Per-layer attention assignment.

    `modes[l]` is "retrieval", "streaming" or "mixed"; for a mixed layer `heads[l][h]` is True where
    KV head `h` keeps full attention. `heads` is None for plans built layer by layer.
    `kv_dtype` says how the retrieval KV (retrieval layers, retrieval heads of mixed layers) is stored: "model"
    (the model's dtype) or "fp8" (float8 e4m3 with one bfloat16 scale per token and KV head; about half the bytes of
    16-bit KV). Streaming KV (sink + window) and the model's own sliding layers always keep the model's dtype.
    """

    modes: tuple[str, ...]
    sink: int
    window: int
    heads: tuple[tuple[bool, ...], ...] | None = None
    model: ModelInfo | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    kv_dtype: str = "model"

    def __post_init__(self) -> None:
        check_sink_window(self.sink, self.window)
        check_kv_dtype(self.kv_dtype)
        if not self.modes:
            raise ValueError("a plan needs at least one layer; got an empty list of modes")
        for i, m in enumerate(self.modes):
            if m not in (RETRIEVAL, STREAMING, MIXED):
                raise ValueError(f"layer {i}: unknown mode {m!r}; expected 'retrieval' or 'streaming'")
        if self.heads is not None:
            self._check_heads()
        elif MIXED in self.modes:
            raise ValueError("a 'mixed' layer needs a head mask: build it with Plan.from_heads")
        need(self.provenance, dict, PROVENANCE)
        need(self.model, (ModelInfo, type(None)), "model")
        if self.model is not None:
            self._check_counts(self.model.num_layers, self.model.num_kv_heads, "the model the plan records")

    def _check_heads(self) -> None:
        """The head mask is rectangular, strictly boolean, and says what `modes` says about each layer."""
        if len(self.heads) != len(self.modes):
            raise ValueError(f"head mask has {len(self.heads)} layers but the plan has {len(self.modes)}")
        widths = {len(h) for h in self.heads}
        if len(widths) != 1 or 0 in widths:
            raise ValueError(f"every layer of the head mask needs the same number (>0) of KV heads; "
                             f"got {sorted(widths)}")
        for i, (mode, row) in enumerate(zip(self.modes, self.heads, strict=True)):
            for h, keep in enumerate(row):
                need(keep, bool, f"heads[{i}][{h}] (true for a retrieval KV head)")
            implied = RETRIEVAL if all(row) else STREAMING if not any(row) else MIXED
            if mode != implied:
                raise ValueError(f"layer {i}: mode {mode!r} disagrees with its head mask {list(row)}, which makes "
                                 f"it {implied!r} (all heads true: retrieval, none: streaming, some: mixed)")

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_layers(cls, modes: Sequence[str], *, sink: int, window: int, model: ModelInfo | None = None,
                    provenance: dict[str, Any] | None = None, kv_dtype: str = "model") -> Plan:
        """Layer-exclusive plan: one of "retrieval" / "streaming" per decoder layer."""
        modes = tuple(modes)
        bad = [(i, m) for i, m in enumerate(modes) if m not in (RETRIEVAL, STREAMING)]
        if bad:
            i, m = bad[0]
            raise ValueError(f"layer {i}: unknown mode {m!r}; expected 'retrieval' or 'streaming'")
        return cls(modes, sink, window, None, model, _notes(provenance), kv_dtype)

    @classmethod
    def from_heads(cls, mask: Sequence[Sequence[bool]], *, sink: int, window: int, model: ModelInfo | None = None,
                   provenance: dict[str, Any] | None = None, kv_dtype: str = "model") -> Plan:
        """DuoAttention-style plan: `mask[layer][kv_head]` is True for a retrieval head."""
        rows = _as_nested_list(mask)
        heads = tuple(tuple(_as_bool(x, i, h) for h, x in enumerate(row)) for i, row in enumerate(rows))
        modes = tuple(RETRIEVAL if all(r) else STREAMING if not any(r) else MIXED for r in heads)
        return cls(modes, sink, window, heads, model, _notes(provenance), kv_dtype)

    def with_kv_dtype(self, kv_dtype: str) -> Plan:
        """This plan with its retrieval KV stored as `kv_dtype` ("model" or "fp8")."""
        return dataclasses.replace(self, kv_dtype=kv_dtype)

    # -- queries ----------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.modes)

    @property
    def streaming_layers(self) -> list[int]:
        """Layers whose every head is streaming."""
        return [i for i, m in enumerate(self.modes) if m == STREAMING]

    @property
    def retrieval_layers(self) -> list[int]:
        return [i for i, m in enumerate(self.modes) if m == RETRIEVAL]

    @property
    def mixed_layers(self) -> list[int]:
        return [i for i, m in enumerate(self.modes) if m == MIXED]

    @property
    def is_layer_exclusive(self) -> bool:
        return MIXED not in self.modes

    def head_mask(self, num_kv_heads: int) -> list[list[bool]]:
        """`[layer][kv_head]` booleans, True for retrieval."""
        if self.heads is not None:
            return [list(r) for r in self.heads]
        return [[m == RETRIEVAL] * num_kv_heads for m in self.modes]

    def kv_fraction(self, context_length: int) -> float:
        """KV-cache bytes at `context_length` tokens relative to full attention on every layer in 16-bit KV.

        Native sliding-window layers recorded in `model` hold their own window in both cases. With kv_dtype "fp8" a
        retrieval token costs `retrieval_bytes()` of a 16-bit one (its float8 values and its scale).
        """
        if context_length < 1:
            raise ValueError(f"context_length must be >= 1; got {context_length}")
        n_heads = self.model.num_kv_heads if self.model else (len(self.heads[0]) if self.heads else 1)
        native = self.model.native_sliding if self.model else {}
        bounded = min(context_length, self.sink + self.window)
        cost = self.retrieval_bytes()
        full = kept = 0.0
        for layer, row in enumerate(self.head_mask(n_heads)):
            if layer in native:
                size = min(context_length, native[layer]) * len(row)
                full, kept = full + size, kept + size
                continue
            full += context_length * len(row)
            kept += sum(context_length * cost if r else bounded for r in row)
        return kept / full

    def retrieval_bytes(self) -> float:
        """Bytes of one retrieval KV element relative to 16-bit: 1 for "model", (1 + scale / head_dim) / 2 for
        "fp8" (head_dim from `model`; without it, the scale is left out)."""
        if self.kv_dtype == "model":
            return 1.0
        return (1 + (FP8_SCALE_BYTES / self.model.head_dim if self.model else 0.0)) / 2

    def check_model(self, info: ModelInfo) -> None:
        """Raise ValueError if this plan cannot drive a model of shape `info`."""
        self._check_counts(info.num_layers, info.num_kv_heads, f"the model ({info.model_type or 'unknown type'})")
        problem = self.model and self.model.mismatch(info)
        if problem:
            raise ValueError(f"plan was {problem}")
        bad = [i for i in info.native_sliding if self.modes[i] != RETRIEVAL]
        if bad:
            raise ValueError(f"layers {bad} already use the model's own sliding window "
                             f"({info.native_sliding[bad[0]]} tokens); a plan may make only full-attention layers "
                             "streaming: set them to 'retrieval'")

    def _check_counts(self, layers: int, kv_heads: int, what: str) -> None:
        if layers != self.num_layers:
            raise ValueError(f"plan has {self.num_layers} layers but {what} has {layers}")
        if self.heads is not None and len(self.heads[0]) != kv_heads:
            raise ValueError(f"plan has {len(self.heads[0])} KV heads per layer but {what} has {kv_heads}")

    # -- persistence --------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": VERSION, "sink": self.sink, "window": self.window,
            "modes": list(self.modes), "heads": [list(r) for r in self.heads] if self.heads else None,
            "model": self.model.to_json() if self.model else None, "provenance": self.provenance,
            **({} if self.kv_dtype == "model" else {"kv_dtype": self.kv_dtype}),
        }

    @classmethod
    def from_json(cls, d: Any, *, source: str = "<dict>") -> Plan:
        jsonfile.check_header(d, source, "plan", FORMAT, VERSION)
        unknown = sorted(set(d) - PLAN_FIELDS)
        if unknown:
            raise ValueError(f"{source} is a damaged plan: unknown fields {unknown} (a plan has {sorted(PLAN_FIELDS)})")
        try:
            model = ModelInfo.from_json(d["model"]) if d.get("model") is not None else None
            heads = d.get("heads")
            if heads is not None:
                heads = tuple(tuple(need(r, list, "each row of heads")) for r in need(heads, list, "heads"))
            notes = d.get("provenance")
            return cls(tuple(need(d["modes"], list, "modes")), d["sink"], d["window"], heads, model,
                       {} if notes is None else notes, d.get("kv_dtype", "model"))
        except KeyError as e:
            raise ValueError(f"{source} is a damaged plan: missing or malformed field {e}") from None
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source} is a damaged plan: {e}") from None

    def save(self, path: str | Path) -> Path:
        return jsonfile.write(path, self.to_json())

    @classmethod
    def load(cls, path_or_name: str | Path) -> Plan:
        """Load a plan file, or a shipped plan by name such as "smollm2-135m@0.5"."""
        path = Path(path_or_name)
        if not path.exists():
            shipped = SHIPPED_DIR / f"{path_or_name}.json"
            if not shipped.exists():
                names = sorted(p.stem for p in SHIPPED_DIR.glob("*.json"))
                raise FileNotFoundError(f"no plan file {str(path)!r}, and no shipped plan of that name "
                                        f"(shipped: {', '.join(names) or 'none'})")
            path = shipped
        return cls.from_json(jsonfile.read(path, "plan"), source=str(path))

    def describe(self) -> str:
        """One line: counts by mode and a letter per layer (R retrieval, s streaming, m mixed, w the model's own
        sliding window, which is neither counted as retrieval nor choosable)."""
        kinds = {RETRIEVAL: "R", STREAMING: "s", MIXED: "m"}
        native = self.model.native_sliding if self.model else {}
        retrieval = [i for i in self.retrieval_layers if i not in native]
        own = f", {len(native)} the model's own sliding window" if native else ""
        return (f"Plan({self.num_layers} layers: {len(retrieval)} retrieval, {len(self.streaming_layers)} streaming, "
                f"{len(self.mixed_layers)} mixed{own}; sink={self.sink}, window={self.window}"
                f"{'; retrieval KV fp8' if self.kv_dtype == 'fp8' else ''}) "
                f"[{''.join('w' if i in native else kinds[m] for i, m in enumerate(self.modes))}]")


def _notes(provenance: Any) -> dict[str, Any]:
    return dict(need({} if provenance is None else provenance, dict, PROVENANCE))


def _as_bool(x: Any, layer: int, head: int) -> bool:
    """A head-mask entry: a bool, or 0 / 1 (numpy and torch masks give these); never a string."""
    x = x.item() if hasattr(x, "item") else x  # numpy / torch scalars
    if isinstance(x, bool) or (isinstance(x, int) and x in (0, 1)):
        return bool(x)
    raise TypeError(f"head mask [{layer}][{head}] must be True/False (or 1/0); got {type(x).__name__} {x!r:.60}")


def _as_nested_list(mask: Any) -> list[list[Any]]:
    if hasattr(mask, "tolist"):
        mask = mask.tolist()
    rows = list(mask)
    if not rows or not all(hasattr(r, "__len__") or hasattr(r, "tolist") for r in rows):
        raise ValueError("head mask must be 2-D: mask[layer][kv_head]")
    return [list(r.tolist() if hasattr(r, "tolist") else r) for r in rows]
