"""`Step`: the token positions one forward call works with, shared by every streaming layer.

Positions are logical: they count a row's real tokens from its first real token, so a left-padded
row behaves exactly like the same row alone. Padding has position -1 and is never attended.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


def logical_positions(attention_mask: torch.Tensor | None, batch: int, past: int, q_len: int,
                      device: torch.device) -> torch.Tensor:
    """Logical positions of the `q_len` new tokens, `(batch, q_len)`; -1 marks padding.

    `attention_mask` is the usual 2-D `(batch, past + q_len)` padding mask (1 = real token), or None.
    """
    if attention_mask is None:
        return torch.arange(past, past + q_len, device=device).expand(batch, q_len)
    if attention_mask.dim() != 2:
        raise ValueError(f"a patched model takes a 2-D attention_mask (batch, tokens); got shape "
                         f"{tuple(attention_mask.shape)}: custom 4-D masks cannot express sink + window layers")
    if attention_mask.shape != (batch, past + q_len):
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)} but the cache holds {past} tokens "
                         f"and the input {q_len}: expected ({batch}, {past + q_len})")
    real = attention_mask.to(device=device, dtype=torch.bool)
    pos = real.long().cumsum(-1) - 1
    return pos[:, past:].masked_fill(~real[:, past:], -1)


@dataclass
class Keep:
    """Which visible streaming keys survive into the cache after this step.

    Either a contiguous head + tail (`index` None; rows identical) or a per-row gather `index` `(batch, kept)`.
    """

    head: int
    tail: int
    index: torch.Tensor | None = None

    def to(self, device: torch.device) -> Keep:
        return self if self.index is None else Keep(self.head, self.tail, self.index.to(device))

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Select along dim -2 of `x` `(batch, heads, visible, head_dim)`."""
        if self.index is not None:
            b, h, _, d = x.shape
            return x.gather(2, self.index[:, None, :, None].expand(b, h, self.index.shape[1], d))
        n = x.shape[-2]
        if self.head + self.tail >= n:
            return x
        if self.tail == 0:
            return x[..., : self.head, :]
        return torch.cat([x[..., : self.head, :], x[..., n - self.tail:, :]], dim=-2)


@dataclass
class Step:
    """One forward call: positions of the queries and of the streaming keys they can see.

    query_pos: `(batch, q_len)`; key_pos: `(batch, visible)` where visible = kept cache + q_len.
    `aligned` means no row has padding, so rows share positions and some masks can be skipped.
    """

    query_pos: torch.Tensor
    key_pos: torch.Tensor
    sink: int
    window: int
    aligned: bool
    keep: Keep | None = None  # what the cache keeps (a RingWrite for static caches); None without a cache
    memo: dict = field(default_factory=dict)  # per-step derived masks, shared by all streaming layers

    def on(self, device: torch.device) -> Step:
        """This step with its tensors on `device`, for layers of a model split across devices; made once per device."""
        if self.query_pos.device == device:
            return self
        copies = self.memo.setdefault("on", {})
        if device not in copies:
            keep = self.keep.to(device) if self.keep is not None else None
            copies[device] = Step(self.query_pos.to(device), self.key_pos.to(device), self.sink, self.window,
                                  self.aligned, keep)
        return copies[device]

    @property
    def needs_mask(self) -> bool:
        """False for aligned single-token decoding: the trimmed cache holds exactly the keys it may see."""
        return not (self.aligned and self.query_pos.shape[1] == 1)


def keep_rule(pos: torch.Tensor, last: torch.Tensor, sink: int, window: int) -> torch.Tensor:
    """Keys at `pos` that a future query (position > `last`) can still see. Shapes broadcast."""
    return (pos >= 0) & ((pos < sink) | (pos >= last - window + 2))


def sink_window_mask(query_pos: torch.Tensor, key_pos: torch.Tensor, sink: int, window: int) -> torch.Tensor:
    """Boolean mask `(batch, 1, q_len, visible)`: key j is seen by query p iff j <= p and (j < sink or p - j < window).

    Queries that are padding see the first key so that no softmax row is empty.
    """
    q = query_pos[:, None, :, None]
    k = key_pos[:, None, None, :]
    allowed = (k >= 0) & (k <= q) & ((k < sink) | (q - k < window))
    empty = (query_pos < 0)[:, None, :, None] & (torch.arange(k.shape[-1], device=k.device) == 0)
    return allowed | empty
