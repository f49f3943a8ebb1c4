"""`course-lib eval` (Lesson 07): nats per token and bits per character of any checkpoint on any
text: a split of the corpus, the held-out poems, or the held-out part of your own text."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from course_lib import env
from course_lib.errors import CourseError

SPLITS = ("train", "val", "finetune")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="nats per token and bits per character of a checkpoint on any text"
    )
    p.add_argument("--checkpoint", type=Path, default=None, help="default: course")
    p.add_argument(
        "--text",
        default="val",
        help=f"a UTF-8 file or folder (its held-out part: the part `course-lib train --text` "
        f"validates on), one of the corpus's splits {SPLITS}, or 'poems' (the poems' test "
        f"part, 15 held-out sonnets); "
        f"default: val",
    )
    p.add_argument(
        "--which",
        choices=["best", "last"],
        default=None,
        help="of a run that kept its best checkpoint: which model (default: the best)",
    )
    p.add_argument(
        "--whole",
        action="store_true",
        help="score the whole of a --text file, the part a model trained on included (its "
        "number then flatters a model that memorised it)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda or mps (default: the best there is)")
    p.set_defaults(run=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from course_lib import data, own_text
    from course_lib.changes import applied
    from course_lib.checkpoint import load_checkpoint, require_tokenizer
    from course_lib.finetune import add_classifier
    from course_lib.metrics import bits_per_char, evaluate_all
    from course_lib.poems import poem_splits

    path = args.checkpoint or env.checkpoint_dir() / "course"
    ckpt = load_checkpoint(path, device=args.device or env.get_device(), which=args.which)
    if applied(ckpt.model, add_classifier):
        raise CourseError(f"{path} is a classifier: it scores labels, not next tokens")
    tok = require_tokenizer(ckpt, path)
    if args.text in SPLITS:  # each work followed by <|endoftext|>, as the token files are
        splits = data.load_splits()
        ids = data.encode_splits(splits, tok)[args.text]
        n_chars = sum(len(w.text) for w in getattr(splits, args.text).values())
    elif args.text == "poems":
        text = poem_splits()["test"]
        ids, n_chars = torch.tensor(tok.fast().encode(text).ids), len(text)
    elif args.whole:  # every document whole, as training read them
        docs = {str(f): own_text.read_text(f) for f in own_text.text_files(args.text)}
        works = {n: data.Work(n, n, "text", "val", text) for n, text in docs.items()}
        parts = data.Splits({}, works, {})
        print(f"{args.text}: all of it, the training part included: if this model trained on "
              f"it, the number flatters it (leave out --whole to score the held-out part)",
              file=sys.stderr)  # fmt: skip
    else:  # the part `course-lib train --text` held out
        parts = data.load_splits(text_file=args.text)
        whole = not set(parts.val) & set(parts.train)
        print(f"{args.text}: its held-out part, {len(parts.val)} of "
              f"{len(parts.train | parts.val)} documents"
              + (" (whole ones)" if whole else " (the last 10% of each)"))  # fmt: skip
    if args.text not in (*SPLITS, "poems"):  # each document followed by <|endoftext|>
        ids = data.encode_splits(parts, tok)["val"]
        n_chars = sum(len(w.text) for w in parts.val.values())
    if len(ids) < 2:
        raise CourseError(f"{args.text} is {len(ids)} token(s): give a longer text")
    block = min(ckpt.config.block_size, len(ids) - 1)
    loss = evaluate_all(ckpt.model, ids, block)
    bpc = bits_per_char(loss, len(ids), n_chars)
    print(f"{args.text}: {len(ids):,} tokens, {n_chars:,} characters; windows of {block} tokens")
    print(f"{loss:.4f} nats/token, {bpc:.3f} bits/char")
    return 0
