"""Copies of a model on other devices, for `refine(..., replicas=make_replicas(model, ["cuda:1", ...]))`."""

from __future__ import annotations

import copy

import torch

from ..runtime import plan_of


def make_replicas(model, devices: list[str]) -> list:
    """One deep copy of `model` per entry of `devices` (e.g. `["cuda:1", "cuda:2"]`), each moved there, in eval mode.

    `model` must sit whole on one device and not be patched (a copy of a patched model would share its attention
    entry, not its hook). Raises ValueError for an unknown or unavailable device before copying anything.
    """
    targets = [_device(d) for d in devices]
    if plan_of(model) is not None:
        raise ValueError("unpatch the model before making replicas (zigzag_attn.unpatch(model))")
    if any(hasattr(m, "_hf_hook") for m in model.modules()) or any(p.is_meta for p in model.parameters()):
        raise ValueError("make replicas from a model loaded whole on one device, not one dispatched or offloaded "
                         "by accelerate (device_map)")
    return [_copy_to(model, d) for d in targets]


def _copy_to(model, device: torch.device):
    """A deep copy whose weights are made on `device` directly (no second full copy on the source device)."""
    memo = {}
    for t in (*model.parameters(), *model.buffers()):
        moved = t.detach().to(device, copy=True)
        memo[id(t)] = torch.nn.Parameter(moved, t.requires_grad) if isinstance(t, torch.nn.Parameter) else moved
    return copy.deepcopy(model, memo).to(device).eval()


def _device(name) -> torch.device:
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"unknown device {name!r}: {e}") from None
    if device.type == "meta":
        raise ValueError("a replica on the 'meta' device would have no weights")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {name!r} is not available: torch sees no CUDA GPU here")
        if (device.index or 0) >= count:
            raise ValueError(f"device {name!r} is not available: torch sees {count} CUDA GPU(s), "
                             f"cuda:0 to cuda:{count - 1}")
    try:
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError) as e:
        raise ValueError(f"device {name!r} is not available: {str(e).split('. ')[0].splitlines()[0]}") from None
    return device
