"""`course-lib finetune` and `course-lib eval` (Lesson 07): fine-tune a checkpoint on the poems or
your own text, fully or with LoRA, resumably; measure any checkpoint on any text."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from course_lib import env
from course_lib.errors import CourseError

if TYPE_CHECKING:  # imported when a command runs: `course-lib --help` stays quick
    from course_lib.checkpoint import Checkpoint
    from course_lib.tokenizer import BPETokenizer

SPLITS = ("train", "val", "finetune")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune a checkpoint on the poems or your own text, fully or with LoRA",
        description="Fine-tune a checkpoint, keeping the one of lowest validation loss "
        "(<out>/best); --resume continues exactly where it stopped. The result is a checkpoint "
        "that `course-lib sample` and `course-lib eval` read.",
    )
    p.add_argument("--checkpoint", type=Path, default=None, help="base (default: course)")
    p.add_argument(
        "--text",
        default="poems",
        help="'poems' (Shakespeare's, with the fixed held-out set of course_lib.poems) or a "
        "UTF-8 file (its last 10%% held out)",
    )
    p.add_argument("--method", choices=["full", "lora"], default="lora", help="default: lora")
    p.add_argument("--rank", type=int, default=8, help="LoRA rank (default: 8)")
    p.add_argument("--alpha", type=float, default=16.0, help="LoRA alpha (default: 16)")
    p.add_argument(
        "--targets",
        nargs="+",
        default=["c_attn", "c_fc"],
        help="projections LoRA wraps (default: c_attn c_fc, as Lesson 07)",
    )
    p.add_argument("--out", type=Path, default=None, help="default: <checkpoints>/<base>-<method>")
    p.add_argument("--resume", action="store_true", help="continue from --out where it stopped")
    p.add_argument("--max-steps", type=int, default=300, help="optimizer steps (default: 300)")
    p.add_argument("--max-minutes", type=float, default=None, help="stop after this many minutes")
    p.add_argument("--lr", type=float, default=None, help="peak lr (full 3e-4, lora 3e-3)")
    p.add_argument("--batch-size", type=int, default=16, help="windows per step (default: 16)")
    p.add_argument("--seed", type=int, default=1337, help="seed of batches and adapters")
    p.add_argument("--device", default=None, help="cpu, cuda or mps (default: the best there is)")
    p.set_defaults(run=cmd_finetune)

    p = sub.add_parser(
        "eval", help="nats per token and bits per character of a checkpoint on any text"
    )
    p.add_argument("--checkpoint", type=Path, default=None, help="default: course")
    p.add_argument(
        "--text",
        default="val",
        help=f"a UTF-8 file or folder (its held-out part: the part `course-lib train --text` "
        f"validates on), one of the corpus's splits {SPLITS}, or 'poems' (the held-out poems); "
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


def _texts(text: str) -> dict[str, str]:
    """{"train": ..., "val": ...} for --text poems or a file."""
    from course_lib import data
    from course_lib.poems import poem_splits

    if text == "poems":
        return poem_splits()
    splits = data.load_splits(text_file=text)
    return {s: splits.text(s) for s in ("train", "val")}


def cmd_finetune(args: argparse.Namespace) -> int:
    import torch

    from course_lib.checkpoint import load_checkpoint
    from course_lib.config import TrainConfig
    from course_lib.finetune import add_lora
    from course_lib.metrics import bits_per_char, evaluate_all
    from course_lib.train import train

    base_path = args.checkpoint or env.checkpoint_dir() / "course"
    out = args.out or base_path.with_name(f"{base_path.name}-{args.method}")
    texts = _texts(args.text)  # before loading anything: a bad file fails at once
    base = load_checkpoint(base_path)
    tok = _require_tokenizer(base, base_path)
    fast = tok.fast()
    tokens = {s: torch.tensor(fast.encode(t).ids) for s, t in texts.items()}
    torch.manual_seed(args.seed)  # the adapters' A matrices
    model = base.model
    if args.method == "lora":
        add_lora(model, rank=args.rank, alpha=args.alpha, targets=args.targets)
    lr = args.lr or (3e-4 if args.method == "full" else 3e-3)
    config = TrainConfig(
        batch_size=args.batch_size, max_steps=args.max_steps, lr=lr, min_lr=lr / 10,
        warmup_steps=args.max_steps // 20, eval_interval=25, eval_steps=10,
        checkpoint_interval=25, max_minutes=args.max_minutes, seed=args.seed,
        device=args.device, checkpoint_dir=str(out), keep_best=True,
        log_path=str(out.with_name(out.name + ".metrics.jsonl")),
    )  # fmt: skip
    result = train(model, tokens, config, tokenizer=tok, resume=args.resume)
    if result.best_step != result.step:  # the validation loss rose after its best: keep that
        model = load_checkpoint(out, which="best").model
        print(f"kept: the best checkpoint, step {result.best_step}, in {out}/best")
    loss = evaluate_all(model, tokens["val"], model.config.block_size)
    bpc = bits_per_char(loss, len(tokens["val"]), len(texts["val"]))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"step {result.step}/{config.max_steps} ({args.method}, {trainable:,} trainable "
          f"parameters) in {result.elapsed_s:.0f} s")  # fmt: skip
    print(f"held-out {args.text}, every token: {loss:.4f} nats/token, {bpc:.3f} bits/char")
    print(f"checkpoint: {out}")
    if result.stopped != "max_steps":
        print(f"stopped early ({result.stopped}): continue with the same command and --resume")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from course_lib import data, own_text
    from course_lib.checkpoint import load_checkpoint
    from course_lib.finetune import add_classifier
    from course_lib.metrics import bits_per_char, evaluate_all

    path = args.checkpoint or env.checkpoint_dir() / "course"
    ckpt = load_checkpoint(path, device=args.device or env.get_device(), which=args.which)
    if any(c["change"] == add_classifier.change_name for c in ckpt.model.changes):
        raise CourseError(f"{path} is a classifier: it scores labels, not next tokens")
    tok = _require_tokenizer(ckpt, path)
    if args.text in SPLITS:  # each work followed by <|endoftext|>, as the token files are
        splits = data.load_splits()
        ids = data.encode_splits(splits, tok)[args.text]
        n_chars = sum(len(w.text) for w in getattr(splits, args.text).values())
    elif args.text == "poems":
        text = _texts("poems")["val"]
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


def _require_tokenizer(ckpt: Checkpoint, path: Path) -> BPETokenizer:
    from course_lib.checkpoint import TOKENIZER, CheckpointError

    if ckpt.tokenizer is None:
        raise CheckpointError(
            f"the checkpoint {path} has no {TOKENIZER}, so text cannot become token ids: copy "
            f"the tokenizer the model was trained with into the folder as {TOKENIZER}"
        )
    return ckpt.tokenizer
