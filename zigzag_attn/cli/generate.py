"""`zigzag-attn generate MODEL --plan PLAN --prompt-file F`: greedy generation with a patched model, with timings
and the KV-cache memory it used against full attention's."""

from __future__ import annotations

import itertools
import sys
import threading
import time

from ..plan import KV_DTYPES
from .common import CLIError, Model, UsageError, int_arg, load_plan, read_text, say, with_kv_dtype
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
    gen.add_argument("--kv-dtype", choices=KV_DTYPES, help="store the plan's retrieval KV as this (default: the plan's "
                     "own; fp8: float8 with per-token scales, about half the bytes)")
    gen.set_defaults(run=run, parser=gen)
    return gen


def run(args, argv: list[str]) -> int:
    import torch

    from .. import cache_of, describe, patch

    text = read_text(args.prompt_file, "--prompt-file") if args.prompt_file is not None else args.prompt
    if not text.strip():
        raise UsageError("argument --prompt-file: the file holds no text" if args.prompt_file is not None
                         else "argument --prompt: the prompt is empty")
    device = pick_device(args.device)
    plan = with_kv_dtype(load_plan(args.plan), args.kv_dtype, device)
    target = Model(args.model)
    target.check_plan(plan)  # before the weights load
    model, tok = target.load(pick_dtype(args.dtype, device), device)
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
    say(f"{plan.describe()}\nprefill of {n_prompt} prompt tokens, then up to {args.max_new_tokens} new tokens ...")
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    clock = Progress(n_prompt, args.max_new_tokens)
    start = time.perf_counter()
    try:
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False, pad_token_id=pad,
                                 return_dict_in_generate=True, streamer=clock)
    finally:
        clock.end()  # (generate calls it too; a second call only clears the line again)
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


SPINNER = "|/-\\"


class Progress:
    """A generate() streamer: notes when each put() comes (the prompt, then every new token) and, on a terminal,
    shows the prefill's elapsed seconds with a spinner, then the count of new tokens, on one stderr line."""

    def __init__(self, prompt_tokens: int, max_new_tokens: int, stream=None):
        self.times: list[float] = []
        self.prompt_tokens, self.max_new_tokens = prompt_tokens, max_new_tokens
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self._stop = threading.Event()
        self._spinner: threading.Thread | None = None

    def put(self, value) -> None:
        self.times.append(time.perf_counter())
        if not self.live:
            return
        if len(self.times) == 1:  # the prompt: prefill starts
            self._spinner = threading.Thread(target=self._spin, daemon=True)
            self._spinner.start()
            return
        self._halt()
        self._show(f"generating: {len(self.times) - 1}/{self.max_new_tokens} new tokens")

    def end(self) -> None:
        self._halt()
        if self.live:
            self._show("")

    def _spin(self) -> None:
        for turn in itertools.cycle(SPINNER):
            self._show(f"prefill of {self.prompt_tokens} tokens: {time.perf_counter() - self.times[0]:.0f} s {turn}")
            if self._stop.wait(0.25):
                return

    def _halt(self) -> None:
        if self._spinner is not None:
            self._stop.set()
            self._spinner.join()
            self._spinner = None

    def _show(self, line: str) -> None:
        """Overwrite the line (an empty `line` clears it)."""
        self.stream.write(f"\r{line:<60}" + ("\r" if not line else ""))
        self.stream.flush()
