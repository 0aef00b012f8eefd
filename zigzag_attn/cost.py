"""`CostModel`: predicted attention time of one decoder layer per decode step, for the three layer kinds.

A layer with `h` of its `H` KV heads retrieval is a retrieval layer (`h == H`), a streaming layer (`h == 0`) or a
mixed layer (otherwise; it makes two attention calls, the others one).

Fallback (the bytes-read model): a decode step of a layer reads its KV cache once,
    bytes = 2 (K and V) * head_dim * dtype_bytes * batch * (h * N + (H - h) * min(N, sink + window)),
and takes `bytes / bandwidth + calls * call_overhead` seconds. It covers the attention layers only: the weights
every plan reads alike are left out. Defaults, from docs/performance.md (H200, session 5):
  * bandwidth 4.25e12 B/s: the measured device copy, 4.23-4.28 TB/s.
  * call_overhead 45e-6 s: the mixed plan (32 mixed layers, 64 attention calls) against the zigzag plan (32 calls)
    at the same KV budget costs 0.50-0.61 ms more kernel time and 0.64-1.52 ms more host time per step (the
    "where a step's time goes" table, 4k-128k, runs 1 and 2); about 0.57 + 0.9 = 1.47 ms over 32 extra calls.
Measured figures (a JSON file written by `CostModel.save`, format "zigzag-attn/cost") override the fallback for
the (phase, batch, h, H, head_dim) they have, inside the range of context lengths they cover (linear in N between
points). A mixed `h` without figures is interpolated linearly in `h` between the nearest measured mixed layers of
the same key (both must cover N); otherwise the fallback answers. Version 1 files have no head_dim: their figures
stand for every head_dim. Version 2 adds "head_dim" to each point and an optional "meta" object (what was timed,
how, with which versions).

`benchmarks/layer_cost.py` measures the figures (the time of a decoder layer's attention module: projections,
RoPE, cache write, attention and output projection). Files for known GPUs ship in `zigzag_attn/data/costs/`,
named by `device_slug(torch.cuda.get_device_name())`; `CostModel.for_device()` picks one, or the fallback.
"""

from __future__ import annotations

import bisect
import re
from pathlib import Path
from typing import Any

from . import jsonfile

FORMAT = "zigzag-attn/cost"
VERSION = 2
READS = (1, 2)  # versions this code reads
COSTS_DIR = Path(__file__).parent / "data" / "costs"
PHASES = ("decode", "prefill")
H200_BANDWIDTH = 4.25e12
H200_CALL_OVERHEAD = 45e-6


Key = tuple[str, int, int, int, "int | None"]  # (phase, batch, h, H, head_dim or None: any head_dim)


class CostModel:
    """Per-layer attention seconds as a function of (context N, batch B, h retrieval heads of H, head_dim).

    Args:
        bandwidth: bytes per second of the fallback.
        call_overhead: seconds per attention call of the fallback (a mixed layer makes two).
        dtype_bytes: bytes per KV element (2 for bfloat16).
        points: measured figures, `{(phase, batch, h, H[, head_dim]): [(N, seconds), ...]}`; a key without
            head_dim (or with None) stands for every head_dim. See `load`.
        device: the device the figures were measured on (a note).
        meta: free-form JSON notes saved with the figures (what was timed, how).
        source: where the figures came from (a note for `describe`; not saved).
    """

    def __init__(self, *, bandwidth: float = H200_BANDWIDTH, call_overhead: float = H200_CALL_OVERHEAD,
                 dtype_bytes: int = 2, points: dict[tuple, list[tuple[int, float]]] | None = None,
                 device: str | None = None, meta: dict[str, Any] | None = None, source: str | None = None) -> None:
        for name, v in (("bandwidth", bandwidth), ("call_overhead", call_overhead), ("dtype_bytes", dtype_bytes)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 or v == float("inf"):
                raise ValueError(f"{name} must be a finite number >= 0; got {v!r}")
        if bandwidth == 0:
            raise ValueError("bandwidth must be > 0")
        self.bandwidth, self.call_overhead, self.dtype_bytes = float(bandwidth), float(call_overhead), dtype_bytes
        self.points: dict[Key, list[tuple[int, float]]] = {}
        for k, v in (points or {}).items():
            key = (*k, None)[:5] if len(k) == 4 else tuple(k)
            if len(key) != 5:
                raise ValueError(f"a points key is (phase, batch, h, H[, head_dim]); got {k!r}")
            self.points[key] = sorted(v)
        self.device, self.meta, self.source = device, dict(meta or {}), source

    def decode(self, h: int, H: int, *, context_length: int, batch: int, sink: int, window: int,
               head_dim: int) -> float:
        """Seconds of one decode step of one layer with `h` of `H` KV heads retrieval."""
        _check_heads(h, H)
        measured = self._measured("decode", batch, h, H, head_dim, context_length)
        if measured is not None:
            return measured
        bounded = min(context_length, sink + window)
        tokens = h * context_length + (H - h) * bounded
        calls = 1 if h in (0, H) else 2
        return 2 * head_dim * self.dtype_bytes * batch * tokens / self.bandwidth + calls * self.call_overhead

    def prefill(self, h: int, H: int, *, context_length: int, batch: int, head_dim: int | None = None) -> float:
        """Seconds of prefilling one layer; measured figures only (LookupError where there are none)."""
        _check_heads(h, H)
        measured = self._measured("prefill", batch, h, H, head_dim, context_length)
        if measured is None:
            raise LookupError(f"no measured prefill figures for batch={batch}, h={h} of H={H}, head_dim={head_dim} "
                              f"at context_length={context_length}; the bytes-read fallback models decode only")
        return measured

    def describe(self) -> dict[str, Any]:
        """JSON notes for a plan's provenance: which model predicted its latency."""
        return {"kind": "measured+bytes" if self.points else "bytes", "device": self.device, "source": self.source,
                "bandwidth": self.bandwidth, "call_overhead": self.call_overhead, "dtype_bytes": self.dtype_bytes}

    def _measured(self, phase: str, batch: int, h: int, H: int, head_dim: int | None, N: int) -> float | None:
        for d in dict.fromkeys((head_dim, None)):  # figures for this head_dim first, then version-1 figures
            got = _at(self.points.get((phase, batch, h, H, d)), N)
            if got is None and 0 < h < H:  # a mixed layer: between the nearest measured mixed layers
                lo = [(g, t) for g in range(h - 1, 0, -1) if (t := _at(self.points.get((phase, batch, g, H, d)), N))
                      is not None][:1]
                hi = [(g, t) for g in range(h + 1, H) if (t := _at(self.points.get((phase, batch, g, H, d)), N))
                      is not None][:1]
                if lo and hi:
                    (g0, t0), (g1, t1) = lo[0], hi[0]
                    got = t0 + (t1 - t0) * (h - g0) / (g1 - g0)
            if got is not None:
                return got
        return None

    # -- persistence --------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        def point(p, b, h, H, d, n, t):
            return {"phase": p, "batch": b, "heads": h, "num_kv_heads": H, **({} if d is None else {"head_dim": d}),
                    "context_length": n, "seconds": t}
        ordered = sorted(self.points.items(), key=lambda kv: (*kv[0][:4], kv[0][4] or 0))
        return {"format": FORMAT, "version": VERSION, "device": self.device, "bandwidth": self.bandwidth,
                "call_overhead": self.call_overhead, "dtype_bytes": self.dtype_bytes,
                **({"meta": self.meta} if self.meta else {}),
                "points": [point(*key, n, t) for key, pts in ordered for n, t in pts]}

    def save(self, path: str | Path) -> Path:
        return jsonfile.write(path, self.to_json())

    @classmethod
    def from_json(cls, d: Any, *, source: str = "<dict>") -> CostModel:
        version = d.get("version") if isinstance(d, dict) else None
        jsonfile.check_header(d, source, "cost", FORMAT, version if version in READS else VERSION)
        points: dict[Key, list[tuple[int, float]]] = {}
        try:
            for i, p in enumerate(d["points"]):
                d_head = p.get("head_dim") if version >= 2 else None
                key = (p["phase"], p["batch"], p["heads"], p["num_kv_heads"], d_head)
                n, t = p["context_length"], p["seconds"]
                if key[0] not in PHASES:
                    raise ValueError(f"points[{i}].phase must be one of {PHASES}; got {key[0]!r}")
                if not all(isinstance(x, int) and not isinstance(x, bool) for x in (*key[1:4], n)):
                    raise ValueError(f"points[{i}]: batch, heads, num_kv_heads and context_length must be integers")
                if d_head is not None and (isinstance(d_head, bool) or not isinstance(d_head, int) or d_head < 1):
                    raise ValueError(f"points[{i}].head_dim must be an integer >= 1; got {d_head!r}")
                _check_heads(key[2], key[3])
                if key[1] < 1 or n < 1 or isinstance(t, bool) or not isinstance(t, (int, float)) or not t >= 0:
                    raise ValueError(f"points[{i}]: batch and context_length must be >= 1 and seconds >= 0")
                if any(n == m for m, _ in points.get(key, [])):
                    raise ValueError(f"points[{i}] repeats context_length {n} for {key}")
                points.setdefault(key, []).append((n, float(t)))
            meta = d.get("meta", {})
            if not isinstance(meta, dict):
                raise ValueError(f"meta must be an object; got {type(meta).__name__}")
            return cls(bandwidth=d["bandwidth"], call_overhead=d["call_overhead"], dtype_bytes=d["dtype_bytes"],
                       points=points, device=d.get("device"), meta=meta, source=source)
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{source} is a damaged cost file: missing or malformed field {e}") from None
        except ValueError as e:
            raise ValueError(f"{source} is a damaged cost file: {e}") from None

    @classmethod
    def load(cls, path: str | Path) -> CostModel:
        return cls.from_json(jsonfile.read(Path(path), "cost"), source=str(path))

    @classmethod
    def for_device(cls, name: str | None = None, *, directory: str | Path | None = None) -> CostModel:
        """The shipped figures for GPU `name` (default: `torch.cuda.get_device_name()`, or none without CUDA),
        else the bytes-read fallback. `.source` says which, and why: print it to the user."""
        if name is None:
            import torch

            name = torch.cuda.get_device_name() if torch.cuda.is_available() else None
        folder = COSTS_DIR if directory is None else Path(directory)
        if name is None:
            return cls(source="fallback: no CUDA device, so no measured figures apply; the bytes-read model "
                              "of the H200 (zigzag_attn.cost)")
        path = folder / f"{device_slug(name)}.json"
        if path.is_file():
            model = cls.load(path)
            model.source = f"measured: {path.name} for {name!r}"
            return model
        known = sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []
        return cls(source=f"fallback: no measured figures for {name!r} (have: {', '.join(known) or 'none'}); the "
                          "bytes-read model of the H200 (zigzag_attn.cost); measure with benchmarks/layer_cost.py")


def device_slug(name: str) -> str:
    """A device name as a file name: "NVIDIA H200" -> "nvidia-h200"."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if not slug:
        raise ValueError(f"device name {name!r} has no letters or digits")
    return slug


def _at(pts: list[tuple[int, float]] | None, N: int) -> float | None:
    """Linear interpolation of sorted (N, seconds) points at N; None outside their range."""
    if not pts or not pts[0][0] <= N <= pts[-1][0]:
        return None
    i = bisect.bisect_left(pts, (N, float("-inf")))
    if pts[i][0] == N:
        return pts[i][1]
    (n0, t0), (n1, t1) = pts[i - 1], pts[i]
    return t0 + (t1 - t0) * (N - n0) / (n1 - n0)


def _check_heads(h: Any, H: Any) -> None:
    if isinstance(H, bool) or not isinstance(H, int) or H < 1:
        raise ValueError(f"the number of KV heads must be an integer >= 1; got {H!r}")
    if isinstance(h, bool) or not isinstance(h, int) or not 0 <= h <= H:
        raise ValueError(f"retrieval heads must be an integer in [0, {H}]; got {h!r}")
