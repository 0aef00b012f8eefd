"""`CostModel`: predicted attention time of one decoder layer per decode step, for the three layer kinds.

A layer with `h` of its `H` KV heads retrieval is a retrieval layer (`h == H`), a streaming layer (`h == 0`) or a
mixed layer (otherwise; it makes two attention calls, the others one).

Fallback (the bytes-read model): a decode step of a layer reads its KV cache once,
    bytes = 2 (K and V) * head_dim * dtype_bytes * batch * (h * N + (H - h) * min(N, sink + window)),
and takes `bytes / bandwidth + calls * call_overhead` seconds. It covers the attention layers only: the weights
every plan reads alike are left out. Defaults, from docs/performance.md (H200):
  * bandwidth 4.25e12 B/s: the measured device copy, 4.23-4.28 TB/s.
  * call_overhead 45e-6 s: the mixed plan (32 mixed layers, 64 attention calls) against the zigzag plan (32 calls)
    at the same KV budget costs 0.50-0.61 ms more kernel time and 0.64-1.52 ms more host time per step (the
    "where a step's time goes" table, 4k-128k, runs 1 and 2); about 0.57 + 0.9 = 1.47 ms over 32 extra calls.
Measured figures (a JSON file written by `CostModel.save`, format "zigzag-attn/cost") override the fallback for
the (phase, batch, h, H, head_dim) they have, linear in N between points. Past the context lengths they cover, a
decode figure is the nearest one moved as the fallback moves (the bytes of the extra or missing tokens), so
predictions are continuous at the ends of the measured range and monotone in N beyond them (rising with h); prefill
has no fallback, so none is given there. A mixed `h` without figures is interpolated linearly in `h` between the
nearest measured mixed layers of the same key; otherwise (no figures for the key) the fallback answers.
`CostModel.origin` says which of these gave a prediction. Version 1 files have no head_dim: their figures stand for
every head_dim. Version 2 adds "head_dim" to each point and an optional "meta" object (what was timed, how, with
which versions).

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
BEYOND = ("; outside its context lengths extrapolated, and for shapes it has no figures for the bytes-read model "
          "(CostModel.origin says which, per prediction)")  # how a source of measured figures is used


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
        for name, v in (("bandwidth", bandwidth), ("dtype_bytes", dtype_bytes)):
            if v == 0:  # a cache read for free
                raise ValueError(f"{name} must be > 0")
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
        """Seconds of one decode step of one layer with `h` of `H` KV heads retrieval (`origin` says whence)."""
        return self._decode(h, H, context_length, batch, sink, window, head_dim)[0]

    def origin(self, h: int, H: int, *, context_length: int, batch: int, sink: int, window: int,
               head_dim: int) -> str:
        """Where `decode`'s figure for the same arguments comes from; its first word is "measured" (figures of this
        key, at or between measured context lengths), "interpolated" (between measured mixed layers),
        "extrapolated" (past the measured context lengths) or "fallback" (the bytes-read model)."""
        return self._decode(h, H, context_length, batch, sink, window, head_dim)[1]

    def _decode(self, h: int, H: int, N: int, batch: int, sink: int, window: int, d: int) -> tuple[float, str]:
        _check_heads(h, H)

        def fallback(g: int, n: int) -> float:
            tokens = g * n + (H - g) * min(n, sink + window)
            calls = 1 if g in (0, H) else 2
            return 2 * d * self.dtype_bytes * batch * tokens / self.bandwidth + calls * self.call_overhead

        measured = self._measured("decode", batch, h, H, d, N, fallback)
        if measured is not None:
            return measured
        return fallback(h, N), (f"fallback: the bytes-read model (no measured decode figures for these heads at "
                                f"batch={batch}, H={H}, head_dim={d})")

    def prefill(self, h: int, H: int, *, context_length: int, batch: int, head_dim: int | None = None) -> float:
        """Seconds of prefilling one layer; measured figures only (LookupError where there are none)."""
        _check_heads(h, H)
        measured = self._measured("prefill", batch, h, H, head_dim, context_length)
        if measured is None:
            raise LookupError(f"no measured prefill figures for batch={batch}, h={h} of H={H}, head_dim={head_dim} "
                              f"at context_length={context_length}; the bytes-read fallback models decode only")
        return measured[0]

    def describe(self) -> dict[str, Any]:
        """JSON notes for a plan's provenance: which model predicted its latency."""
        return {"kind": "measured+bytes" if self.points else "bytes", "device": self.device, "source": self.source,
                "bandwidth": self.bandwidth, "call_overhead": self.call_overhead, "dtype_bytes": self.dtype_bytes}

    def _measured(self, phase: str, batch: int, h: int, H: int, head_dim: int | None, N: int,
                  fallback=None) -> tuple[float, str] | None:
        """(seconds, origin) from the figures for this key at N, or between the nearest measured mixed layers of
        its H; past a key's context lengths, moved as `fallback(g, n)` moves (None without one). None: no figures."""
        for d in dict.fromkeys((head_dim, None)):  # figures for this head_dim first, then version-1 figures
            def at(g: int, d: int | None = d):
                move = None if fallback is None else (lambda n: fallback(g, n))
                return _at(self.points.get((phase, batch, g, H, d)), N, move)

            got = at(h)
            if got is None and 0 < h < H:  # a mixed layer: between the nearest measured mixed layers
                lo = next(((g, t) for g in range(h - 1, 0, -1) if (t := at(g)) is not None), None)
                hi = next(((g, t) for g in range(h + 1, H) if (t := at(g)) is not None), None)
                if lo and hi:
                    (g0, (t0, how0)), (g1, (t1, how1)) = lo, hi
                    past = next((how for how in (how0, how1) if how != "measured"), None)
                    got = (t0 + (t1 - t0) * (h - g0) / (g1 - g0),
                           f"interpolated: between the measured mixed layers of {g0} and {g1} retrieval heads"
                           + (f" ({past})" if past else ""))
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
                if (key[1] < 1 or n < 1 or isinstance(t, bool) or not isinstance(t, (int, float)) or not t >= 0
                        or t == float("inf")):
                    raise ValueError(f"points[{i}]: batch and context_length must be >= 1 and seconds >= 0 and "
                                     f"finite; got seconds={t!r}")
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
            model.source = f"measured: {path.name} for {name!r}{BEYOND}"
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


def _at(pts: list[tuple[int, float]] | None, N: int, move=None) -> tuple[float, str] | None:
    """(seconds, origin) at N from sorted (N, seconds) points: linear between them; past them, the nearest moved by
    `move(N) - move(edge)` (at least 0), or None without `move`."""
    if not pts:
        return None
    ns, ts = [n for n, _ in pts], [t for _, t in pts]
    if ns[0] <= N <= ns[-1]:
        i = bisect.bisect_left(ns, N)
        if ns[i] == N:
            return ts[i], "measured"
        return ts[i - 1] + (ts[i] - ts[i - 1]) * (N - ns[i - 1]) / (ns[i] - ns[i - 1]), "measured"
    if move is None:
        return None
    edge = 0 if N < ns[0] else -1
    return (max(0.0, ts[edge] + (move(N) - move(ns[edge]))),  # the change first: exactly 0 where it is 0
            f"extrapolated: outside the measured {ns[0]}..{ns[-1]} tokens, moved as the bytes-read model moves")


def _check_heads(h: Any, H: Any) -> None:
    if isinstance(H, bool) or not isinstance(H, int) or H < 1:
        raise ValueError(f"the number of KV heads must be an integer >= 1; got {H!r}")
    if isinstance(h, bool) or not isinstance(h, int) or not 0 <= h <= H:
        raise ValueError(f"retrieval heads must be an integer in [0, {H}]; got {h!r}")
