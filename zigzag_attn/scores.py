"""`Scores`: how retrieval-critical each KV head (and each layer) of a model is.

Pure data, like `Plan`: JSON in, JSON out, never pickle. Solvers in `zigzag_attn.solve` turn scores into plans.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from zigzag_attn import jsonfile
from zigzag_attn.plan import ModelInfo

FORMAT = "zigzag-attn/scores"
VERSION = 1
AGGREGATES = ("mean", "max", "sum")


class Scores:
    """Per-head and per-layer retrieval importance; higher means more retrieval-critical.

    Args:
        heads: `[num_layers, num_kv_heads]` array-like or tensor; stored as a float32 CPU tensor (a copy).
        layers: `[num_layers]` layer importance. If omitted it is derived from `heads` by `aggregate` over the
            KV-head axis: "mean" (default), "max" or "sum". Measured on SmolLM2 (docs/results.md), the mean of
            per-head gates hides a layer with a single retrieval head and the max ties at 1.0; `profile` therefore
            gives layer scores measured per layer (one gate per layer, or ablation of whole layers).
        model: the `ModelInfo` the scores were measured on; its layer and KV-head counts must match `heads`.
        method: how the scores were obtained, e.g. "gates", "attention", "measured".
        meta: free JSON-able dict (loss curve, timing, ...). Only JSON-native values round-trip exactly
            (tuples come back as lists, dict keys as strings).
        aggregate: see `layers`.
    """

    def __init__(self, heads: Any, layers: Any = None, model: ModelInfo | None = None, method: str | None = None,
                 meta: dict[str, Any] | None = None, *, aggregate: str = "mean") -> None:
        if aggregate not in AGGREGATES:
            raise ValueError(f"aggregate must be one of {', '.join(AGGREGATES)}; got {aggregate!r}")
        self.heads = _as_float_tensor(heads, "heads")
        if self.heads.dim() != 2:
            raise ValueError(f"heads must be 2-D [num_layers, num_kv_heads]; got shape {tuple(self.heads.shape)} "
                             f"({self.heads.dim()}-D)")
        if 0 in self.heads.shape:
            raise ValueError(f"heads needs at least one layer and one KV head; got shape {tuple(self.heads.shape)}")
        _check_finite(self.heads, "heads")
        if layers is None:
            agg = getattr(self.heads.double(), aggregate)(dim=1)  # float64 so a mean of large values cannot overflow
            self.layers = (agg.values if aggregate == "max" else agg).float().contiguous()
            _check_finite(self.layers, f"layer scores (the {aggregate} of heads)")  # a sum can overflow
        else:
            self.layers = _as_float_tensor(layers, "layers")
            if self.layers.dim() != 1 or self.layers.shape[0] != self.heads.shape[0]:
                raise ValueError(f"layers must have shape [{self.heads.shape[0]}] (one score per layer of heads); "
                                 f"got shape {tuple(self.layers.shape)}")
            _check_finite(self.layers, "layers")
        if model is not None:
            if not isinstance(model, ModelInfo):
                raise TypeError(f"model must be a ModelInfo or None; got {type(model).__name__}")
            if (model.num_layers, model.num_kv_heads) != tuple(self.heads.shape):
                raise ValueError(f"heads has shape {tuple(self.heads.shape)} but the model has {model.num_layers} "
                                 f"layers x {model.num_kv_heads} KV heads")
        if method is not None and not isinstance(method, str):
            raise TypeError(f"method must be a string or None; got {type(method).__name__}")
        if meta is None:
            meta = {}
        if not isinstance(meta, dict):
            raise TypeError(f"meta must be a dict; got {type(meta).__name__}")
        try:
            json.dumps(meta)
        except (TypeError, ValueError) as e:
            raise ValueError(f"meta must be JSON-serialisable: {e}") from None
        self.model, self.method, self.meta = model, method, dict(meta)

    @property
    def num_layers(self) -> int:
        return int(self.heads.shape[0])

    @property
    def num_kv_heads(self) -> int:
        return int(self.heads.shape[1])

    def __repr__(self) -> str:
        name = (self.model.name or self.model.model_type) if self.model else None
        return (f"Scores({self.num_layers} layers x {self.num_kv_heads} KV heads, method={self.method!r}"
                + (f", model={name!r}" if name else "") + ")")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Scores):
            return NotImplemented
        return (torch.equal(self.heads, other.heads) and torch.equal(self.layers, other.layers)
                and self.model == other.model and self.method == other.method and self.meta == other.meta)

    __hash__ = None  # mutable tensors inside

    def check_model(self, info: ModelInfo, this: str = "the model") -> None:
        """Raise ValueError unless these scores were measured on a model like `info` (called `this`): the same layers
        x KV heads and, where the scores record their model, its type, head_dim and own sliding-window layers."""
        on = f" (they were measured on {self.model.name})" if self.model and self.model.name else ""
        if (self.num_layers, self.num_kv_heads) != (info.num_layers, info.num_kv_heads):
            raise ValueError(f"the scores have {self.num_layers} layers x {self.num_kv_heads} KV heads, but {this} has "
                             f"{info.num_layers} x {info.num_kv_heads}{on}")
        problem = self.model and self.model.mismatch(info, this, native=True)
        if problem:
            raise ValueError(f"the scores were {problem}{on}")

    # -- persistence --------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """float32 values are written as exact doubles, so a JSON round trip is lossless."""
        return {
            "format": FORMAT, "version": VERSION, "method": self.method,
            "model": self.model.to_json() if self.model else None,
            "heads": self.heads.tolist(), "layers": self.layers.tolist(), "meta": self.meta,
        }

    @classmethod
    def from_json(cls, d: Any, *, source: str = "<dict>") -> Scores:
        jsonfile.check_header(d, source, "scores", FORMAT, VERSION)
        try:
            model = ModelInfo.from_json(d["model"]) if d.get("model") else None
            return cls(d["heads"], d["layers"], model, d.get("method"), d.get("meta") or {})
        except (KeyError, TypeError) as e:
            raise ValueError(f"{source} is a damaged scores file: missing or malformed field {e}") from None
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None

    def save(self, path: str | Path) -> Path:
        return jsonfile.write(path, self.to_json(), indent=None)

    @classmethod
    def load(cls, path: str | Path) -> Scores:
        path = Path(path)
        return cls.from_json(jsonfile.read(path, "scores"), source=str(path))


def _as_float_tensor(x: Any, what: str) -> torch.Tensor:
    try:
        if isinstance(x, torch.Tensor):
            return x.detach().to(device="cpu", dtype=torch.float32).clone()
        return torch.tensor(x.tolist() if hasattr(x, "tolist") else x, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{what} must be a rectangular array of numbers: {e}") from None


def _check_finite(t: torch.Tensor, what: str) -> None:
    bad = (~torch.isfinite(t)).nonzero().tolist()
    if bad:
        where = tuple(bad[0]) if len(bad[0]) > 1 else bad[0][0]
        raise ValueError(f"{what} contains {len(bad)} NaN/inf value(s) (float32), the first at index {where}: "
                         f"{t[tuple(bad[0])].item()}")


def split_layer_scores(layers: Scores, heads: Scores, *, sharpness: float = 1.0, method: str | None = None) -> Scores:
    """Scores for `solve_hybrid` that keep a layer ranking and let head scores decide where a layer can split.

    Each layer's score `layers.layers[l]` (shape `[num_layers]`, >= 0) is shared among its KV heads in proportion
    to `heads.heads[l] ** sharpness` (shape `[num_layers, num_kv_heads]`, >= 0; a layer whose head scores are all
    0 shares equally): `out.heads[l, h] = layers.layers[l] * w[l, h] / sum_h w[l, h]` with `w = heads.heads **
    sharpness`, and
    `out.layers = layers.layers`. So a whole layer retains exactly its layer score and `solve_hybrid(out,
    max_mixed=0)` is `solve(layers)`'s plan; with mixed layers allowed, the solver gives up a whole retrieval layer
    for one head of each of two streaming layers where those heads carry most of their layers' score (e.g.
    DuoAttention gates of one head near 1, the other near 0). `sharpness` > 1 makes unequal heads more unequal
    (gates 0.6 and 1.0 share 0.37 / 0.63 at 1, 0.02 / 0.98 at 8), so small differences between near-equal heads
    matter less than a clearly weaker head. `model` comes from `layers` (else `heads`).
    """
    for s, what in ((layers, "layers"), (heads, "heads")):
        if not isinstance(s, Scores):
            raise TypeError(f"{what} must be a Scores; got {type(s).__name__}")
    if layers.num_layers != heads.num_layers:
        raise ValueError(f"layers has {layers.num_layers} layers but heads has {heads.num_layers}")
    if layers.model is not None and heads.model is not None:
        try:
            heads.check_model(layers.model, "the model of layers")
        except ValueError as e:
            raise ValueError(f"heads: {e}") from None
    if (layers.layers < 0).any():
        raise ValueError(f"layer scores must be >= 0 to be shared among heads; the lowest is "
                         f"{float(layers.layers.min())} (shift or rank them first)")
    if (heads.heads < 0).any():
        raise ValueError(f"head scores must be >= 0 (they are shares of a layer); the lowest is "
                         f"{float(heads.heads.min())}")
    if isinstance(sharpness, bool) or not isinstance(sharpness, (int, float)) or not 0 < sharpness < float("inf"):
        raise ValueError(f"sharpness must be a number > 0 (the power of the head scores); got {sharpness!r}")
    # in log space, relative to each layer's largest head: w ** sharpness neither underflows (1e-5 and 3e-5 at 80)
    # nor overflows (1e30 at 20); a zero head stays 0 and a layer of zeros shares equally
    log = heads.heads.double().log()
    top = log.max(dim=1, keepdim=True).values
    w = torch.where(log > -math.inf, (log - top) * sharpness, -math.inf).exp()
    total = w.sum(dim=1, keepdim=True)  # >= 1 (the largest head's 1) unless every head is 0
    share = torch.where(total > 0, w / total.clamp_min(1.0), 1.0 / w.shape[1])
    split = (layers.layers.double()[:, None] * share).float()
    meta = {"layers_method": layers.method, "heads_method": heads.method, "sharpness": sharpness}
    return Scores(split, layers.layers, layers.model or heads.model,
                  method or f"{layers.method}+{heads.method}", meta)
