"""`method="gates"`: DuoAttention-style gate training.

Each KV head (or each layer, granularity="layer") gets a gate alpha in [0, 1] and its attention output becomes
`alpha * full + (1 - alpha) * streaming` (sink + window). Only the gates train, distilling the final hidden states of
the frozen full-attention model at the positions that predict the answer tokens, with an L1 push towards streaming:
`loss = MSE + lam * mean(alpha) [+ tie * mean over layers of the within-layer variance of alpha]`.
High gates mark retrieval heads. The model's own sliding-window layers are not gated (their gates read 1).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import warnings

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_layers import GradientCheckpointingLayer

from ..data.passkey import IGNORE, Sample
from ..model_info import describe
from ..runtime import kernels, plan_of
from ..runtime.hooks import unregister
from ..runtime.patch import _attention_function, _decoder
from ..runtime.step import logical_positions
from .measure import batch

GRANULARITIES = ("head", "layer")
# Is the ranking trained? How far the gates moved says little: the Qwen 1.5B's gates moved 0.11 in 100 steps (a head
# plan at the all-streaming floor) and 0.13 in 1,000 (a strong one), the 0.5B's 0.09 in 1,000. What settles is the
# ranking: the upper half of the gates after 3/4 of the steps is the final upper half to 0.96 on the 0.5B's 1,000
# steps, while the 1.5B's upper half after 100 steps shared only 0.75 with its 1,000-step one (docs/results.md).
MIN_CHANGE = 0.02  # below this the gates did not move at all
MIN_SETTLED = 0.9  # share of the upper half after 3/4 of the steps that is still there at the end
_names = itertools.count()


class _Gated:
    """`AttentionInterface` function mixing full and streaming attention on gated layers (`module.layer_idx`)."""

    def __init__(self, original, gates: torch.Tensor, rows: dict[int, int], sink: int, window: int):
        self.original, self.gates, self.rows, self.sink, self.window = original, gates, rows, sink, window
        self.pos: torch.Tensor | None = None  # `(batch, seq)` logical positions of the current forward

    def __call__(self, module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        """query `(batch, heads, seq, head_dim)`, key/value `(batch, kv_heads, seq, head_dim)` -> `(batch, seq, heads,
        head_dim)`."""
        full = self.original(module, query, key, value, attention_mask, scaling=scaling, dropout=0.0, **kwargs)[0]
        row = self.rows.get(module.layer_idx)
        if row is None:
            return full, None
        if kwargs.get("softcap") is not None:
            raise NotImplementedError("attention logit soft-capping is not supported on streaming layers")
        kv_heads, group = key.shape[1], query.shape[1] // key.shape[1]
        if query.is_cuda and group > 1:  # masked SDPA takes GQA only in its math kernel: O(seq^2) memory
            key, value = key.repeat_interleave(group, 1), value.repeat_interleave(group, 1)
        stream = kernels.sink_window_sdpa(query, key, value, self.pos, self.pos, sink=self.sink, window=self.window,
                                          scale=scaling).float()
        alpha = self.gates[row].expand(kv_heads).repeat_interleave(group)[:, None]  # (heads, 1)
        return (stream + alpha * (full.float() - stream)).to(full.dtype), None


def train_gates(model, samples: list[Sample], *, sink: int, window: int, granularity: str = "head",
                tie: float = 0.0, lam: float = 0.05, steps: int = 200, lr: float = 0.02, warmup: float = 0.1,
                init: float = 1.0, batch_size: int = 1, checkpointing: bool | None = None, seed: int = 0,
                progress: bool = True) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Train the gates; returns `heads` `[num_layers, num_kv_heads]`, `layers` `[num_layers]` (float32 CPU) and meta.

    `layers` is the layer's gate (granularity="layer") or the mean of its head gates. AdamW with linear warm-up over
    `warmup` of the steps, then cosine decay to 0; gates are clamped to [0, 1] after each step. Each step takes
    `batch_size` samples (left-padded), cycling through `samples` in a seeded order. checkpointing: activation
    checkpointing (None: on for CUDA). The model is left as it was (attention, requires_grad, modes, checkpointing).
    """
    _check(granularity, tie, lam, steps, lr, warmup, init, batch_size, samples)
    if plan_of(model) is not None:
        raise ValueError("train_gates needs the model's own attention: unpatch it first (zigzag_attn.unpatch)")
    info = describe(model)
    device = next(model.parameters()).device
    decoder = _decoder(model)
    layers = [i for i in range(info.num_layers) if i not in info.native_sliding]
    if not layers:
        raise ValueError("the model has no full-attention layers to gate")
    targets = [_teacher(decoder, s, device) for s in samples]
    gates = torch.nn.Parameter(torch.full((len(layers), info.num_kv_heads if granularity == "head" else 1),
                                          float(init), device=device))
    fn = _Gated(_attention_function(model.config._attn_implementation, decoder), gates,
                {layer: r for r, layer in enumerate(layers)}, sink, window)
    opt = torch.optim.AdamW([gates], lr=lr, weight_decay=0.0)
    warm = math.ceil(warmup * steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else
                                              0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm))))
    if checkpointing is None:
        checkpointing = device.type == "cuda" and model.supports_gradient_checkpointing
    order = _order(len(samples), torch.Generator().manual_seed(seed))
    losses, distills, snapshots = [], [], {}
    quarters = {max(1, round(steps * q / 4)) for q in (1, 2, 3)}  # steps after which the gates are recorded
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.random.fork_rng(devices=[device] if device.type == "cuda" else []))
        torch.manual_seed(seed)
        stack.enter_context(_frozen(model, checkpointing))
        stack.enter_context(_attention(model, fn))
        bar = tqdm(range(steps), desc="training gates", disable=not progress)
        for _ in bar:
            picks = [next(order) for _ in range(batch_size)]
            ids, _, mask = batch([samples[i] for i in picks], device)
            fn.pos = logical_positions(mask, ids.shape[0], 0, ids.shape[1], device)
            hidden = decoder(input_ids=ids, attention_mask=mask, position_ids=fn.pos.clamp_min(0),
                             use_cache=False).last_hidden_state
            pad = [ids.shape[1] - len(samples[i]) for i in picks]
            student = torch.cat([hidden[r, targets[i][0] + pad[r]] for r, i in enumerate(picks)]).float()
            distill = F.mse_loss(student, torch.cat([targets[i][1] for i in picks]))
            loss = distill + lam * gates.mean() + tie * gates.var(dim=1, unbiased=False).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                gates.clamp_(0.0, 1.0)
            losses.append(round(loss.item(), 6))
            distills.append(round(distill.item(), 6))
            if len(losses) in quarters:  # how the ranking settles: compare with the final gates
                snapshots[len(losses)] = gates.detach().float().cpu().clone()  # a copy: on CPU .cpu() aliases
            bar.set_postfix(loss=losses[-1])
    final = gates.detach().float().cpu()
    heads = torch.ones(info.num_layers, info.num_kv_heads)
    heads[layers] = final.expand(len(layers), info.num_kv_heads)
    change = float((final - init).abs().mean())
    settled = upper_half_kept(snapshots[max(quarters)], final)  # steps >= 1: the 3/4 snapshot always exists
    if change < MIN_CHANGE or settled < MIN_SETTLED:
        why = (f"moved only {change:.3f} on average from their start of {init}" if change < MIN_CHANGE else
               f"were still re-ranking: only {settled:.2f} of the upper half after {max(quarters)} steps stayed there")
        warnings.warn(f"in {steps} steps the gates {why}, so plans from them may be no better than chance "
                      "(DuoAttention trains 2,000 steps); raise steps", UserWarning, stacklevel=2)
    meta = {"granularity": granularity, "tie": tie, "lam": lam, "steps": steps, "lr": lr, "loss_curve": losses,
            "distill_curve": distills, "mean_change": round(change, 4), "settled": round(settled, 4),
            "snapshots": {str(k): [[round(g, 4) for g in row] for row in v.tolist()]
                          for k, v in sorted(snapshots.items())}}  # step -> the gated layers' gates
    return heads, heads[:, 0].clone() if granularity == "layer" else heads.mean(dim=1), meta


def upper_half_kept(before, after) -> float:
    """Share of the upper half of the gates `before` (any shape) that is in the upper half of `after` (same shape).
    Ties go to the lower index, the same way in both."""
    a, b = torch.as_tensor(before, dtype=torch.float32).flatten(), torch.as_tensor(after, dtype=torch.float32).flatten()
    k = max(1, a.numel() // 2)
    top = [set(torch.sort(-x, stable=True).indices[:k].tolist()) for x in (a, b)]
    return len(top[0] & top[1]) / k


def _order(n: int, generator: torch.Generator):
    """Sample indices forever: one seeded permutation of range(n) after another."""
    while True:
        yield from torch.randperm(n, generator=generator).tolist()


@torch.no_grad()
def _teacher(decoder, sample: Sample, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions `(n,)` whose hidden state predicts an answer token, and the frozen model's final hidden states
    there `(n, hidden)` float32."""
    where = ((sample.labels[1:] != IGNORE).nonzero().flatten()).to(device)
    ids, _, mask = batch([sample], device)
    hidden = decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    return where, hidden[0, where].float()


@contextlib.contextmanager
def _attention(model, fn: _Gated):
    """Route the model's attention through `fn` for the block, restoring the original implementation after."""
    original = model.config._attn_implementation
    name = f"zigzag-gates-{next(_names)}"
    try:
        AttentionInterface.register(name, fn)
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[original])
        model.set_attn_implementation(name)
        if model.config._attn_implementation != name:
            raise RuntimeError(f"{type(model).__name__} does not allow changing its attention implementation")
        yield
    finally:
        model.set_attn_implementation(original)
        unregister(name)


@contextlib.contextmanager
def _frozen(model, checkpointing: bool):
    """Freeze the parameters and, if asked, turn on activation checkpointing for the block; restore both after.

    transformers only checkpoints layers in training mode, so just the checkpointed layers are put in training
    mode (their attention and dropout modules stay in eval mode: no dropout)."""
    grads = [p.requires_grad for p in model.parameters()]
    modes = {m: m.training for m in model.modules()}
    was_on = any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    hooked = bool(getattr(model, "_require_grads_hooks", None) or hasattr(model, "_require_grads_hook"))
    enable = getattr(model, "activation_checkpointing_enable", None)
    disable = getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable
    try:
        model.requires_grad_(False)
        if checkpointing and not was_on:
            if enable is not None:
                enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        for m in model.modules():
            if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing:
                m.training = True
        yield
    finally:
        if checkpointing and not was_on:
            disable()
            if not hooked:
                model.disable_input_require_grads()
        for m, training in modes.items():
            m.training = training
        for p, g in zip(model.parameters(), grads, strict=True):
            p.requires_grad_(g)


def _check(granularity, tie, lam, steps, lr, warmup, init, batch_size, samples) -> None:
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {', '.join(GRANULARITIES)}; got {granularity!r}")
    for name, value in (("tie", tie), ("lam", lam)):
        if not value >= 0:
            raise ValueError(f"{name} must be >= 0; got {value!r}")
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1; got {value!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0; got {lr!r}")
    if not 0 <= warmup <= 1:
        raise ValueError(f"warmup must be a fraction of the steps in [0, 1]; got {warmup!r}")
    if not 0 <= init <= 1:
        raise ValueError(f"init must be in [0, 1]; got {init!r}")
    if not samples:
        raise ValueError("train_gates needs at least one sample")
    for i, s in enumerate(samples):
        if not bool((s.labels[1:] != IGNORE).any()):
            raise ValueError(f"sample {i} has no answer tokens (labels other than {IGNORE}) after its first token")
