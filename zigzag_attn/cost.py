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
the (phase, batch, h, H) they have, inside the range of context lengths they cover (linear in N between points).
No measured figures ship with the package.
"""

from __future__ import annotations

import bisect
from pathlib import Path
from typing import Any

from . import jsonfile

FORMAT = "zigzag-attn/cost"
VERSION = 1
PHASES = ("decode", "prefill")
H200_BANDWIDTH = 4.25e12
H200_CALL_OVERHEAD = 45e-6


class CostModel:
    """Per-layer attention seconds as a function of (context N, batch B, h retrieval heads of H).

    Args:
        bandwidth: bytes per second of the fallback.
        call_overhead: seconds per attention call of the fallback (a mixed layer makes two).
        dtype_bytes: bytes per KV element (2 for bfloat16).
        points: measured figures, `{(phase, batch, h, H): [(N, seconds), ...]}`; see `load`.
        device: the device the figures were measured on (a note).
    """

    def __init__(self, *, bandwidth: float = H200_BANDWIDTH, call_overhead: float = H200_CALL_OVERHEAD,
                 dtype_bytes: int = 2, points: dict[tuple[str, int, int, int], list[tuple[int, float]]] | None = None,
                 device: str | None = None) -> None:
        for name, v in (("bandwidth", bandwidth), ("call_overhead", call_overhead), ("dtype_bytes", dtype_bytes)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 or v == float("inf"):
                raise ValueError(f"{name} must be a finite number >= 0; got {v!r}")
        if bandwidth == 0:
            raise ValueError("bandwidth must be > 0")
        self.bandwidth, self.call_overhead, self.dtype_bytes = float(bandwidth), float(call_overhead), dtype_bytes
        self.points = {k: sorted(v) for k, v in (points or {}).items()}
        self.device = device

    def decode(self, h: int, H: int, *, context_length: int, batch: int, sink: int, window: int,
               head_dim: int) -> float:
        """Seconds of one decode step of one layer with `h` of `H` KV heads retrieval."""
        _check_heads(h, H)
        measured = self._measured("decode", batch, h, H, context_length)
        if measured is not None:
            return measured
        bounded = min(context_length, sink + window)
        tokens = h * context_length + (H - h) * bounded
        calls = 1 if h in (0, H) else 2
        return 2 * head_dim * self.dtype_bytes * batch * tokens / self.bandwidth + calls * self.call_overhead

    def prefill(self, h: int, H: int, *, context_length: int, batch: int) -> float:
        """Seconds of prefilling one layer; measured figures only (LookupError where there are none)."""
        _check_heads(h, H)
        measured = self._measured("prefill", batch, h, H, context_length)
        if measured is None:
            raise LookupError(f"no measured prefill figures for batch={batch}, h={h} of H={H} at "
                              f"context_length={context_length}; the bytes-read fallback models decode only")
        return measured

    def describe(self) -> dict[str, Any]:
        """JSON notes for a plan's provenance: which model predicted its latency."""
        return {"kind": "measured+bytes" if self.points else "bytes", "device": self.device,
                "bandwidth": self.bandwidth, "call_overhead": self.call_overhead, "dtype_bytes": self.dtype_bytes}

    def _measured(self, phase: str, batch: int, h: int, H: int, N: int) -> float | None:
        pts = self.points.get((phase, batch, h, H))
        if not pts or not pts[0][0] <= N <= pts[-1][0]:
            return None
        i = bisect.bisect_left(pts, (N, float("-inf")))
        if pts[i][0] == N:
            return pts[i][1]
        (n0, t0), (n1, t1) = pts[i - 1], pts[i]
        return t0 + (t1 - t0) * (N - n0) / (n1 - n0)

    # -- persistence --------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "device": self.device, "bandwidth": self.bandwidth,
                "call_overhead": self.call_overhead, "dtype_bytes": self.dtype_bytes,
                "points": [{"phase": p, "batch": b, "heads": h, "num_kv_heads": H, "context_length": n, "seconds": t}
                           for (p, b, h, H), pts in sorted(self.points.items()) for n, t in pts]}

    def save(self, path: str | Path) -> Path:
        return jsonfile.write(path, self.to_json())

    @classmethod
    def from_json(cls, d: Any, *, source: str = "<dict>") -> CostModel:
        jsonfile.check_header(d, source, "cost", FORMAT, VERSION)
        points: dict[tuple[str, int, int, int], list[tuple[int, float]]] = {}
        try:
            for i, p in enumerate(d["points"]):
                key = (p["phase"], p["batch"], p["heads"], p["num_kv_heads"])
                n, t = p["context_length"], p["seconds"]
                if key[0] not in PHASES:
                    raise ValueError(f"points[{i}].phase must be one of {PHASES}; got {key[0]!r}")
                if not all(isinstance(x, int) and not isinstance(x, bool) for x in (*key[1:], n)):
                    raise ValueError(f"points[{i}]: batch, heads, num_kv_heads and context_length must be integers")
                _check_heads(key[2], key[3])
                if key[1] < 1 or n < 1 or isinstance(t, bool) or not isinstance(t, (int, float)) or not t >= 0:
                    raise ValueError(f"points[{i}]: batch and context_length must be >= 1 and seconds >= 0")
                if any(n == m for m, _ in points.get(key, [])):
                    raise ValueError(f"points[{i}] repeats context_length {n} for {key}")
                points.setdefault(key, []).append((n, float(t)))
            return cls(bandwidth=d["bandwidth"], call_overhead=d["call_overhead"], dtype_bytes=d["dtype_bytes"],
                       points=points, device=d.get("device"))
        except (KeyError, TypeError) as e:
            raise ValueError(f"{source} is a damaged cost file: missing or malformed field {e}") from None
        except ValueError as e:
            raise ValueError(f"{source} is a damaged cost file: {e}") from None

    @classmethod
    def load(cls, path: str | Path) -> CostModel:
        return cls.from_json(jsonfile.read(Path(path), "cost"), source=str(path))


def _check_heads(h: Any, H: Any) -> None:
    if isinstance(H, bool) or not isinstance(H, int) or H < 1:
        raise ValueError(f"the number of KV heads must be an integer >= 1; got {H!r}")
    if isinstance(h, bool) or not isinstance(h, int) or not 0 <= h <= H:
        raise ValueError(f"retrieval heads must be an integer in [0, {H}]; got {h!r}")
