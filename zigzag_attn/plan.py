"""`Plan`: which layers (or KV heads) keep full attention and which stream with sink + window.

A plan is pure data: JSON in, JSON out, never pickle. It is layer-exclusive (ZigzagAttention) when
every layer is all-retrieval or all-streaming, and mixed (DuoAttention) when a layer has both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import jsonfile

FORMAT = "zigzag-attn/plan"
VERSION = 1
RETRIEVAL, STREAMING, MIXED = "retrieval", "streaming", "mixed"
SHIPPED_DIR = Path(__file__).parent / "plans"


@dataclass(frozen=True)
class ModelInfo:
    """The shape of the model a plan was made for; compared with the model at patch time."""

    model_type: str | None
    num_layers: int
    num_kv_heads: int
    head_dim: int
    name: str | None = None
    native_sliding: dict[int, int] = field(default_factory=dict)  # layer -> its own sliding window

    def to_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["native_sliding"] = {str(k): v for k, v in self.native_sliding.items()}
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ModelInfo:
        d = dict(d)
        d["native_sliding"] = {int(k): int(v) for k, v in (d.get("native_sliding") or {}).items()}
        return cls(**d)


def check_sink_window(sink: Any, window: Any) -> None:
    if isinstance(sink, bool) or not isinstance(sink, int) or sink < 0:
        raise ValueError(f"sink must be an integer >= 0 (the number of first tokens every query sees); got {sink!r}")
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be an integer >= 1 (recent tokens each query sees, itself included); "
                         f"got {window!r}")


@dataclass(frozen=True)
class Plan:
    """Per-layer attention assignment.

    `modes[l]` is "retrieval", "streaming" or "mixed"; for a mixed layer `heads[l][h]` is True where
    KV head `h` keeps full attention. `heads` is None for plans built layer by layer.
    """

    modes: tuple[str, ...]
    sink: int
    window: int
    heads: tuple[tuple[bool, ...], ...] | None = None
    model: ModelInfo | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_sink_window(self.sink, self.window)
        if not self.modes:
            raise ValueError("a plan needs at least one layer; got an empty list of modes")
        for i, m in enumerate(self.modes):
            if m not in (RETRIEVAL, STREAMING, MIXED):
                raise ValueError(f"layer {i}: unknown mode {m!r}; expected 'retrieval' or 'streaming'")
        if self.heads is not None:
            if len(self.heads) != len(self.modes):
                raise ValueError(f"head mask has {len(self.heads)} layers but the plan has {len(self.modes)}")
            widths = {len(h) for h in self.heads}
            if len(widths) != 1 or 0 in widths:
                raise ValueError(f"every layer of the head mask needs the same number (>0) of KV heads; "
                                 f"got {sorted(widths)}")
        elif MIXED in self.modes:
            raise ValueError("a 'mixed' layer needs a head mask: build it with Plan.from_heads")
        if self.model is not None:
            self._check_counts(self.model.num_layers, self.model.num_kv_heads, "the model the plan records")

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_layers(cls, modes: Sequence[str], *, sink: int, window: int, model: ModelInfo | None = None,
                    provenance: dict[str, Any] | None = None) -> Plan:
        """Layer-exclusive plan: one of "retrieval" / "streaming" per decoder layer."""
        modes = tuple(modes)
        bad = [(i, m) for i, m in enumerate(modes) if m not in (RETRIEVAL, STREAMING)]
        if bad:
            i, m = bad[0]
            raise ValueError(f"layer {i}: unknown mode {m!r}; expected 'retrieval' or 'streaming'")
        return cls(modes, sink, window, None, model, dict(provenance or {}))

    @classmethod
    def from_heads(cls, mask: Sequence[Sequence[bool]], *, sink: int, window: int, model: ModelInfo | None = None,
                   provenance: dict[str, Any] | None = None) -> Plan:
        """DuoAttention-style plan: `mask[layer][kv_head]` is True for a retrieval head."""
        heads = tuple(tuple(bool(x) for x in row) for row in _as_nested_list(mask))
        modes = tuple(RETRIEVAL if all(r) else STREAMING if not any(r) else MIXED for r in heads)
        return cls(modes, sink, window, heads, model, dict(provenance or {}))

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
        """KV-cache bytes at `context_length` tokens relative to full attention on every layer.

        Native sliding-window layers recorded in `model` hold their own window in both cases.
        """
        if context_length < 1:
            raise ValueError(f"context_length must be >= 1; got {context_length}")
        n_heads = self.model.num_kv_heads if self.model else (len(self.heads[0]) if self.heads else 1)
        native = self.model.native_sliding if self.model else {}
        bounded = min(context_length, self.sink + self.window)
        full = kept = 0
        for layer, row in enumerate(self.head_mask(n_heads)):
            if layer in native:
                size = min(context_length, native[layer]) * len(row)
                full, kept = full + size, kept + size
                continue
            full += context_length * len(row)
            kept += sum(context_length if r else bounded for r in row)
        return kept / full

    def check_model(self, info: ModelInfo) -> None:
        """Raise ValueError if this plan cannot drive a model of shape `info`."""
        self._check_counts(info.num_layers, info.num_kv_heads, f"the model ({info.model_type or 'unknown type'})")
        if self.model is not None:
            if self.model.model_type and info.model_type and self.model.model_type != info.model_type:
                raise ValueError(f"plan was made for a {self.model.model_type!r} model but this model is "
                                 f"{info.model_type!r}")
            if self.model.head_dim != info.head_dim:
                raise ValueError(f"plan was made for head_dim {self.model.head_dim} but the model has {info.head_dim}")
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
        }

    @classmethod
    def from_json(cls, d: Any, *, source: str = "<dict>") -> Plan:
        jsonfile.check_header(d, source, "plan", FORMAT, VERSION)
        try:
            model = ModelInfo.from_json(d["model"]) if d.get("model") else None
            return cls(tuple(d["modes"]), d["sink"], d["window"],
                       tuple(tuple(bool(x) for x in r) for r in d["heads"]) if d.get("heads") else None,
                       model, dict(d.get("provenance") or {}))
        except (KeyError, TypeError) as e:
            raise ValueError(f"{source} is a damaged plan: missing or malformed field {e}") from None
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None

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
                f"{len(self.mixed_layers)} mixed{own}; sink={self.sink}, window={self.window}) "
                f"[{''.join('w' if i in native else kinds[m] for i, m in enumerate(self.modes))}]")


def _as_nested_list(mask: Any) -> list[list[Any]]:
    if hasattr(mask, "tolist"):
        mask = mask.tolist()
    rows = list(mask)
    if not rows or not all(hasattr(r, "__len__") or hasattr(r, "tolist") for r in rows):
        raise ValueError("head mask must be 2-D: mask[layer][kv_head]")
    return [list(r.tolist() if hasattr(r, "tolist") else r) for r in rows]
