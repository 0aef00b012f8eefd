"""`zigzag-attn generate MODEL --plan PLAN --prompt-file F`: greedy generation with a patched model, with timings
and the KV-cache memory it used against full attention's."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from .common import CLIError, UsageError, int_arg, load_model, load_plan, say
from .common import device as pick_device
from .common import dtype as pick_dtype


def add_parser(sub):
    gen = sub.add_parser("generate", help="generate text with a patched model",
                         description="Generate with MODEL patched by a plan; reports tokens/s and KV-cache memory.")
    gen.add_argument("model", metavar="MODEL")
    gen.add_argument("--plan", required=True, metavar="PLAN", help="plan file or shipped plan name")
    prompt = gen.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt-file", metavar="FILE")
    prompt.add_argument("--prompt", metavar="TEXT")
    gen.add_argument("--max-new-tokens", type=int_arg(1), default=64)
    gen.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    gen.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto")
    gen.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    gen.set_defaults(run=run, parser=gen)
    return gen


def run(args, argv: list[str]) -> int:
    import torch

    from .. import cache_of, describe, patch

    if args.prompt_file is not None:
        try:
            text = Path(args.prompt_file).read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            raise CLIError(f"cannot read --prompt-file: {e}") from None
    else:
        text = args.prompt
    if not text.strip():
        raise UsageError("argument --prompt: the prompt is empty")
    device = pick_device(args.device)
    plan = load_plan(args.plan)
    model, tok = load_model(args.model, pick_dtype(args.dtype, device), device)
    try:
        patch(model, plan)
    except (ValueError, TypeError) as e:
        raise CLIError(f"the plan does not fit {args.model}: {e}") from None
    if args.chat:
        if not getattr(tok, "chat_template", None):
            raise CLIError(f"--chat: {args.model}'s tokenizer has no chat template")
        text = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                       add_generation_prompt=True)
    inputs = tok(text, return_tensors="pt", add_special_tokens=not args.chat).to(device)
    n_prompt = inputs.input_ids.shape[1]
    say(f"{plan.describe()}\nprompt: {n_prompt} tokens; generating up to {args.max_new_tokens} ...")
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    clock = _Clock()
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False, pad_token_id=pad,
                             return_dict_in_generate=True, streamer=clock)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    new = out.sequences[0, n_prompt:]
    print(tok.decode(new, skip_special_tokens=True))
    cache = cache_of(out)
    tokens = cache.get_seq_length() if cache is not None else n_prompt + len(new)
    info = describe(model)
    itemsize = next(model.parameters()).element_size()
    full = sum(2 * info.num_kv_heads * info.head_dim * min(tokens, info.native_sliding.get(i, tokens)) * itemsize
               for i in range(info.num_layers))
    used = cache.nbytes() if hasattr(cache, "nbytes") else full
    print("---", file=sys.stderr)
    first = (clock.times[1] - start) if len(clock.times) > 1 else seconds
    decode = (f", then {(len(new) - 1) / (seconds - first):.1f} tokens/s decoding"
              if len(new) > 1 and seconds > first else "")
    say(f"{len(new)} new tokens in {seconds:.2f} s ({len(new) / seconds:.1f} tokens/s overall): "
         f"prefill of {n_prompt} prompt tokens + first token {first:.2f} s{decode}")
    say(f"KV cache at {tokens} tokens: {used / 2**20:.2f} MiB; full attention would hold {full / 2**20:.2f} MiB "
         f"({used / full:.1%})")
    return 0


class _Clock:
    """A generate() streamer that only notes when each put() comes: the prompt, then every new token."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass
