"""`course-lib finetune` (Lesson 07): fine-tune a checkpoint on the poems or your own text, fully
or with LoRA, resumably. `course-lib eval` (cli/evaluate.py) measures the result."""

from __future__ import annotations

import argparse
from pathlib import Path

from course_lib import env
from course_lib.cli.options import add_config_options
from course_lib.config import TrainConfig


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
    add_config_options(
        p, TrainConfig, ("max_steps", "max_minutes", "lr", "batch_size", "seed", "device"),
        defaults={"max_steps": 300, "batch_size": 16, "seed": 1337},
        notes={"lr": "default: full 3e-4, lora 3e-3", "seed": "and of the adapters"},
    )  # fmt: skip
    p.set_defaults(run=cmd_finetune)


def _texts(text: str) -> dict[str, str]:
    """{"train": ..., "val": ...} for --text poems (with "test", the part to report on) or a
    file (its held-out part both chooses the best step and is reported on)."""
    from course_lib import data
    from course_lib.poems import poem_splits

    if text == "poems":
        return poem_splits()
    splits = data.load_splits(text_file=text)
    return {s: splits.text(s) for s in ("train", "val")}


def cmd_finetune(args: argparse.Namespace) -> int:
    import torch

    from course_lib.checkpoint import load_checkpoint, require_tokenizer
    from course_lib.finetune import add_lora
    from course_lib.metrics import bits_per_char, evaluate_all
    from course_lib.train import train

    base_path = args.checkpoint or env.checkpoint_dir() / "course"
    out = args.out or base_path.with_name(f"{base_path.name}-{args.method}")
    texts = _texts(args.text)  # before loading anything: a bad file fails at once
    base = load_checkpoint(base_path)
    tok = require_tokenizer(base, base_path)
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
    held = "test" if "test" in texts else "val"  # the poems have a part no choice has seen
    loss = evaluate_all(model, tokens[held], model.config.block_size)
    bpc = bits_per_char(loss, len(tokens[held]), len(texts[held]))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"step {result.step}/{config.max_steps} ({args.method}, {trainable:,} trainable "
          f"parameters) in {result.elapsed_s:.0f} s")  # fmt: skip
    part = " (the test part: the held-out sonnets)" if held == "test" else ""
    print(f"held-out {args.text}{part}, every token: {loss:.4f} nats/token, {bpc:.3f} bits/char")
    print(f"checkpoint: {out}")
    if result.stopped != "max_steps":
        print(f"stopped early ({result.stopped}): continue with the same command and --resume")
    return 0
