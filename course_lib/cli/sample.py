"""`course-lib sample`: write text with a trained model, streamed as it comes (Lesson 06)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from course_lib import env
from course_lib.errors import UsageError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample",
        help="write text with a trained model, streaming it to the terminal",
        description="Sample from a checkpoint. A prompt longer than the model's context is cut "
        "to its last block_size tokens; past the context, the model goes on from the last half.",
    )
    p.add_argument(
        "--checkpoint", type=Path, default=None, help="checkpoint folder (default: course)"
    )
    p.add_argument("--prompt", default="\n", help="the text to continue (default: a newline)")
    p.add_argument("--max-new-tokens", type=int, default=200, help="tokens to write (default: 200)")
    p.add_argument(
        "--temperature", type=float, default=1.0, help="> 0; below 1 is safer, above 1 wilder"
    )
    p.add_argument("--top-k", type=int, default=None, help="sample among the k likeliest tokens")
    p.add_argument(
        "--top-p", type=float, default=None, help="sample among the likeliest tokens holding p"
    )
    p.add_argument("--greedy", action="store_true", help="always the likeliest token")
    p.add_argument("--seed", type=int, default=0, help="the same seed writes the same text")
    p.add_argument(
        "--stop-at-eot", action="store_true", help="stop at <|endoftext|> (the end of a work)"
    )
    p.add_argument(
        "--no-cache", action="store_true", help="no KV cache: recompute the context every token"
    )
    p.add_argument("--device", default=None, help="cpu, cuda or mps (default: the best there is)")
    p.set_defaults(run=cmd_sample)


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from course_lib.checkpoint import load_checkpoint, require_tokenizer
    from course_lib.sampling import check_sampling, stream

    path = args.checkpoint or env.checkpoint_dir() / "course"
    if not args.greedy:  # before loading anything: a typo in an option fails at once
        try:
            check_sampling(args.temperature, args.top_k, args.top_p)
        except ValueError as err:  # an option out of range: bad usage, exit 2
            raise UsageError(str(err)) from None
    ckpt = load_checkpoint(path, device=args.device or env.get_device())
    tok = require_tokenizer(ckpt, path, "a prompt")
    ids = tok.encode(args.prompt)
    block = ckpt.config.block_size
    if len(ids) > block:
        print(f"(the prompt is {len(ids)} tokens, longer than the context: the model sees its "
              f"last {block})", file=sys.stderr)  # fmt: skip
    generator = torch.Generator().manual_seed(args.seed)
    device = next(ckpt.model.parameters()).device
    new: list[int] = []
    shown = ""
    print(args.prompt, end="", flush=True)
    for token in stream(ckpt.model, torch.tensor([ids], device=device), args.max_new_tokens,
                        args.temperature, args.top_k, args.top_p, generator, args.greedy,
                        tok.eot_id if args.stop_at_eot else None, not args.no_cache):  # fmt: skip
        new.append(token.item())
        text = tok.decode(new)
        if not text.endswith("\ufffd"):  # hold back half a UTF-8 character until it is whole
            print(text[len(shown) :], end="", flush=True)
            shown = text
    print(tok.decode(new)[len(shown) :])
    return 0
