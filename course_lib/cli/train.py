"""`course-lib train`: pretrain a GPT on the corpus or your own text (Lesson 05), also under
torchrun. Its options are the fields of TrainConfig and GPTConfig, help texts included."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

from course_lib import data, env
from course_lib.cli.options import add_config_options
from course_lib.config import GPTConfig, TrainConfig
from course_lib.errors import CourseError, UsageError
from course_lib.tokenizer import BPETokenizer


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="pretrain a GPT on the corpus or your own text (also under torchrun)",
        description="Pretrain a GPT; a checkpoint folder is saved as it goes. Under "
        "`torchrun --nproc_per_node N` each process takes 1/N of every batch (DDP).",
    )
    p.add_argument(
        "--preset",
        choices=["course"],
        default="course",
        help="the model shape and schedule (GPTConfig.course(), TrainConfig.course()) and, "
        "without --text, the corpus: `course-lib train` alone trains the course model",
    )
    p.add_argument(
        "--text",
        type=Path,
        nargs="+",
        default=None,
        help="train on your own UTF-8 text: a file, a folder of files or several files (each a "
        "document; validation from every one), with a BPE tokenizer trained on the rest. The "
        "model, vocabulary and passes are sized to the text (it says how and why) and the "
        "checkpoint of lowest validation loss is kept",
    )
    p.add_argument(
        "--vocab-size", type=int, default=None, help="tokenizer size for --text (default: by size)"
    )
    p.add_argument(
        "--depth",
        type=int,
        default=None,
        help="for --text, the model's size in one knob: DEPTH layers, 32*(DEPTH+1) wide "
        "(3: the course shape; default: by the text's size); the shape options override it",
    )
    p.add_argument(
        "--passes",
        type=float,
        default=None,
        help="for --text, how many times to read the training text (default: 30, fewer for big "
        "texts); --max-steps overrides it",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="checkpoint folder (default: <checkpoints>/course or /<text name>); "
        "the metrics log goes beside it, <out>.metrics.jsonl",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from --out exactly where it stopped (if it holds a checkpoint)",
    )
    # The rest are the fields of TrainConfig and GPTConfig, their help texts included; unset,
    # each is the preset's (TrainConfig.course(), GPTConfig.course()), or the resumed run's.
    add_config_options(p, TrainConfig, _train_options())
    add_config_options(p, GPTConfig, _MODEL_OPTIONS, "model ")
    p.set_defaults(run=cmd_train)


# Options of `course-lib train` that come from the config dataclasses. The CLI sets the rest
# itself: where it saves and logs (from --out), the progress bar, and the vocabulary (from the
# tokenizer); TrainConfig.block_size (windows shorter than the context) is for the library.
_MODEL_OPTIONS = ("n_layer", "n_head", "n_embd", "block_size", "dropout", "positions", "bias")


def _train_options() -> tuple[str, ...]:
    skip = {"block_size", "log_path", "checkpoint_dir", "stop_at_step", "progress"}
    return tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name not in skip)


def cmd_train(args: argparse.Namespace) -> int:
    # Imported here: the other commands need neither the model nor the training loop.
    from course_lib import checkpoint, own_text
    from course_lib.model import GPT
    from course_lib.train import train

    out = args.out or env.checkpoint_dir() / (args.text[0].stem if args.text else args.preset)
    resuming = args.resume and checkpoint.checkpoint_exists(out)
    saved_model, saved_train = checkpoint.read_config(out) if resuming else (None, None)
    tokenizer = None
    if resuming and (out / checkpoint.TOKENIZER).is_file():
        tokenizer = BPETokenizer.load(out / checkpoint.TOKENIZER)  # the one the model knows
    if not args.text and (args.depth or args.passes):
        raise UsageError("--depth and --passes size a run to your text: give --text too")

    plan = None
    if args.text:
        splits = data.load_splits(text_file=args.text)
        plan = own_text.plan_for(splits)
        if not resuming:
            print(plan.reason)
        if tokenizer is None:
            tokenizer = BPETokenizer()
            tokenizer.train(splits.text("train"), args.vocab_size or plan.vocab_size)
        tokens = data.encode_splits(splits, tokenizer)
    else:
        splits = data.load_splits()
        tokenizer = tokenizer or data.course_tokenizer()
        tokens = {s: data.load_tokens(s) for s in ("train", "val")}

    shape = {k: getattr(args, k) for k in _MODEL_OPTIONS if getattr(args, k) is not None}
    if saved_model is not None:
        clash = {k: v for k, v in shape.items() if getattr(saved_model, k) != v}
        if clash:
            raise CourseError(
                f"the checkpoint in {out} has "
                + ", ".join(f"{k}={getattr(saved_model, k)}" for k in clash)
                + f", not {', '.join(f'{k}={v}' for k, v in clash.items())}: to resume, leave "
                f"out the shape options; for a new model, pick another --out"
            )
        model_config = saved_model
    elif plan is not None:
        model_config = own_text.shape(args.depth or plan.depth, tokenizer.vocab_size, **shape)
    else:
        model_config = GPTConfig.course(vocab_size=tokenizer.vocab_size, **shape)

    # A resumed run continues with its saved settings; options given now override them.
    known = {f.name for f in dataclasses.fields(TrainConfig)}  # a checkpoint of another version
    if saved_train:
        base = TrainConfig(**{k: v for k, v in saved_train.items() if k in known})
    elif plan is not None:  # passes over the text, evaluated 20 times, the best kept
        if args.passes is not None:  # as asked, past the token cap too
            plan = dataclasses.replace(plan, passes=args.passes, max_tokens=None)
        plan = dataclasses.replace(plan, batch_size=args.batch_size or plan.batch_size)
        base = plan.train_config(len(tokens["train"]), model_config.block_size,
                                 checkpoint_dir=str(out))  # fmt: skip
    else:
        base = TrainConfig.course()  # the preset's schedule: the course model, exactly
    overrides = {k: getattr(args, k) for k in _train_options() if getattr(args, k) is not None}
    if args.lr is not None and args.min_lr is None:
        overrides["min_lr"] = args.lr / 10
    if not saved_train and args.warmup_steps is None:  # a short run warms up for a tenth of it
        max_steps = overrides.get("max_steps", base.max_steps)
        overrides["warmup_steps"] = min(base.warmup_steps, max_steps // 10)
    log_path = out.with_name(out.name + ".metrics.jsonl")
    config = dataclasses.replace(
        base, **overrides, checkpoint_dir=str(out), log_path=str(log_path), stop_at_step=None
    )

    if plan is not None and not saved_train:
        n, block = len(tokens["train"]), config.block_size or model_config.block_size
        passes = config.max_steps * config.batch_size * block / n
        print(f"{n:,} training tokens: {config.max_steps:,} steps of {config.batch_size} x "
              f"{block} tokens, {passes:.1f} passes")  # fmt: skip
    env.seed_everything(config.seed)  # the same initial weights in every process
    model = GPT(model_config)
    result = train(model, tokens, config, tokenizer=tokenizer, resume=args.resume)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun, rank 0 reports
    print(
        f"step {result.step}/{config.max_steps}: train loss {result.train_loss:.4f}, val loss "
        f"{result.val_loss:.4f} nats/token (on {config.eval_steps} batches) in "
        f"{result.elapsed_s:.0f} s"
    )
    kept = model
    if config.keep_best:
        kept = checkpoint.load_checkpoint(out, which="best").model
        rose = result.best_step != result.step
        print(f"kept: the best checkpoint, step {result.best_step} (val loss "
              f"{result.best_val_loss:.4f}), in {out / checkpoint.BEST}"
              + ("; the validation loss rose after it" if rose else ""))  # fmt: skip
    report(kept, tokenizer, tokens, splits)
    print(f"checkpoint: {out}\nmetrics:    {log_path}")
    if result.stopped == "patience":
        print(f"stopped early: {config.patience} evaluations without a lower validation loss")
    elif result.stopped != "max_steps":
        print(f"stopped early ({result.stopped}): continue with --resume --out {out}")
    return 0


def report(model, tokenizer: BPETokenizer, tokens: dict, splits: data.Splits) -> None:
    """The held-out numbers of a trained model against two that know nothing and next to
    nothing (a uniform guess, ln V nats a token; token frequencies, the unigram model), and a
    short sample."""
    import math

    import torch

    from course_lib.metrics import bits_per_char, evaluate_all, unigram_loss
    from course_lib.sampling import generate

    val, block = tokens["val"], model.config.block_size
    if len(val) <= block:
        print(f"validation is {len(val)} tokens, no whole window of {block}: nothing to score")
        return
    chars = sum(len(w.text) for w in splits.val.values())
    losses = {
        "this model": evaluate_all(model, val, block),
        "unigram model": unigram_loss(tokens["train"], val, tokenizer.vocab_size),
        "uniform guess": math.log(tokenizer.vocab_size),
    }
    print(f"held-out text, every token ({len(val):,} tokens, {chars:,} characters):")
    for name, loss in losses.items():
        print(f"  {name:>13}: {bits_per_char(loss, len(val), chars):.3f} bits/char")
    prompt = next((line for w in splits.val.values() for line in w.text.splitlines()
                   if line.strip()), "")[:60]  # fmt: skip
    ids = torch.tensor([tokenizer.encode(prompt + "\n")], device=next(model.parameters()).device)
    out = generate(model.eval(), ids, 60, temperature=0.8, top_k=50,
                   generator=torch.Generator().manual_seed(0))  # fmt: skip
    print(
        "a sample, from the first line of the held-out text:\n" + tokenizer.decode(out[0].tolist())
    )
