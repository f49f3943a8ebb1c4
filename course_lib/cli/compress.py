"""`course-lib compress` (Lesson 08): a smaller checkpoint from a trained one, by quantization,
pruning or distillation. The result is a checkpoint that `course-lib sample` and `course-lib
eval` read, and that `course-lib compress` can compress again (a distilled student in int8)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from course_lib import env
from course_lib.cli.options import add_config_options
from course_lib.config import TrainConfig
from course_lib.errors import UsageError

if TYPE_CHECKING:  # imported when the command runs: `course-lib --help` stays quick
    import torch

    from course_lib.config import GPTConfig
    from course_lib.model import GPT
    from course_lib.tokenizer import BPETokenizer

IMPORTANCE_BATCHES = 8  # batches of training text that head and neuron importance average over


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compress",
        help="quantize, prune or distill a checkpoint into a smaller one",
        description="Compress a checkpoint into --out. Pruning can be followed by a short "
        "recovery fine-tune (--recover-steps); --distill trains a smaller student from it.",
    )
    p.add_argument(
        "--checkpoint", type=Path, default=None, help="what to compress (default: course)"
    )
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--int8", action="store_true", help="int8 codes, one scale per output row")
    how.add_argument("--int4", type=int, metavar="G", help="int4 codes in groups of G inputs")
    how.add_argument("--bf16", action="store_true", help="every weight in bfloat16")
    how.add_argument(
        "--prune-magnitude",
        type=float,
        metavar="A",
        help="zero the fraction A in [0, 1) of the blocks' weights of smallest |w| (--scope)",
    )
    how.add_argument(
        "--prune-heads",
        type=int,
        metavar="N",
        help="remove the N least important attention heads (Michel et al., 2019), physically",
    )
    how.add_argument(
        "--prune-neurons",
        type=int,
        metavar="N",
        help="remove the N least important MLP neurons, physically",
    )
    how.add_argument(
        "--distill",
        metavar="SHAPE",
        help="train a student of this shape from the checkpoint, "
        "e.g. n_layer=2,n_embd=96 (the rest as the teacher's)",
    )
    p.add_argument(
        "--scope",
        choices=["layer", "global"],
        default="layer",
        help="--prune-magnitude per matrix or over all of them (default: layer)",
    )
    p.add_argument(
        "--recover-steps",
        type=int,
        default=0,
        help="after pruning, fine-tune this many steps (default: 0)",
    )
    p.add_argument("--temperature", type=float, default=2.0, help="--distill's T (default: 2)")
    p.add_argument(
        "--alpha",
        type=float,
        default=0.5,
        help="--distill's weight of the soft targets (default: 0.5)",
    )
    add_config_options(
        p, TrainConfig, ("max_steps", "lr", "batch_size", "seed", "device"),
        defaults={"max_steps": 600, "batch_size": 32, "seed": 1337},
        notes={"max_steps": "--distill's", "seed": "and of the student",
               "lr": "default: recovery 1e-3, distill 3e-3"},
        aliases={"max_steps": ["--steps"]},
    )  # fmt: skip
    p.add_argument(
        "--text",
        type=Path,
        default=None,
        help="train (importance, recovery, distillation) on this UTF-8 file instead of the corpus",
    )
    p.add_argument("--out", type=Path, default=None, help="default: <checkpoint>-<method>")
    p.set_defaults(run=cmd_compress)


def _method(args: argparse.Namespace) -> str:
    for name in ("int8", "bf16"):
        if getattr(args, name):
            return name
    for name in ("int4", "prune_magnitude", "prune_heads", "prune_neurons", "distill"):
        if getattr(args, name) is not None:
            return name.replace("_", "-")
    raise AssertionError("argparse requires one method")


def cmd_compress(args: argparse.Namespace) -> int:
    from course_lib import compress
    from course_lib.checkpoint import load_checkpoint, require_tokenizer, save_checkpoint

    method = _method(args)
    base_path = args.checkpoint or env.checkpoint_dir() / "course"
    out = args.out or base_path.with_name(f"{base_path.name}-{method}")
    if args.recover_steps and not method.startswith("prune"):
        raise UsageError(f"--recover-steps follows pruning; {method} does not train")
    if args.recover_steps < 0 or args.max_steps < 1:
        raise UsageError("--recover-steps must be >= 0 and --steps >= 1")
    base = load_checkpoint(base_path)
    tok = require_tokenizer(base, base_path)
    model = base.model
    before = (compress.count_weights(model), model.num_bytes())
    needs_text = method in ("prune-heads", "prune-neurons", "distill") or args.recover_steps
    tokens = _tokens(args.text, tok) if needs_text else None

    if method == "int8":
        compress.quantize_int8(model)
    elif method == "int4":
        compress.quantize_int4(model, args.int4)
    elif method == "bf16":
        compress.quantize_bf16(model)
    elif method == "prune-magnitude":
        compress.prune_magnitude(model, args.prune_magnitude, args.scope)
    elif method in ("prune-heads", "prune-neurons"):
        import torch

        from course_lib.data import get_batch

        g = torch.Generator().manual_seed(args.seed)
        block = model.config.block_size
        batches = [
            get_batch(tokens["train"], args.batch_size, block, g) for _ in range(IMPORTANCE_BATCHES)
        ]
        if method == "prune-heads":
            units = compress.least_important(
                compress.head_importance(model, batches), args.prune_heads
            )
            compress.prune_heads(model, units)
        else:
            importance = compress.neuron_importance(model, batches)
            compress.prune_neurons(model, compress.least_important(importance, args.prune_neurons))
    if method == "distill":
        model = _distill(model, tokens, tok, out, args)
    elif args.recover_steps:
        _recover(model, tokens, tok, out, args)
    else:
        save_checkpoint(out, model, tok)

    params, size = compress.count_weights(model), model.num_bytes()
    print(
        f"{method}: {before[0]:,} -> {params:,} weights, {before[1]:,} -> {size:,} bytes "
        f"of weights ({size / before[1]:.3f}x)"
    )
    if method == "prune-magnitude":
        print(f"{compress.sparsity(model):.1%} of the blocks' weights are zero (stored densely)")
    text = f" --text {args.text}" if args.text else ""  # your text: its held-out part
    print(f"checkpoint: {out}\nmeasure it: course-lib eval --checkpoint {out}{text}")
    return 0


def _tokens(text: Path | None, tok: BPETokenizer) -> dict[str, torch.Tensor]:
    """The training text as ids of the checkpoint's own tokenizer: the corpus, or --text."""
    from course_lib import data

    splits = data.load_splits(text_file=text) if text else data.load_splits()
    return data.encode_splits(splits, tok)


def _config(args: argparse.Namespace, out: Path, steps: int, lr: float) -> TrainConfig:
    return TrainConfig(
        batch_size=args.batch_size,
        max_steps=steps,
        lr=lr,
        min_lr=lr / 10,
        warmup_steps=max(1, steps // 20),
        eval_interval=max(1, steps // 4),
        eval_steps=10,
        checkpoint_interval=max(1, steps // 4),
        seed=args.seed,
        device=args.device,
        checkpoint_dir=str(out),
        log_path=str(out.with_name(out.name + ".metrics.jsonl")),
    )


def _recover(model: GPT, tokens: dict, tok: BPETokenizer, out: Path, args) -> None:
    """A short fine-tune after pruning, saved into ``out`` as it goes (pruned weights stay 0)."""
    from course_lib.train import train

    config = _config(args, out, args.recover_steps, args.lr or 1e-3)
    result = train(model, {s: tokens[s] for s in ("train", "val")}, config, tokenizer=tok)
    print(
        f"recovery: {result.step} steps, val loss {result.val_loss:.4f} nats/token in "
        f"{result.elapsed_s:.0f} s"
    )


def _distill(teacher: GPT, tokens: dict, tok: BPETokenizer, out: Path, args) -> GPT:
    from course_lib.compress import distill
    from course_lib.model import GPT

    env.seed_everything(args.seed)  # the student's initial weights
    student = GPT(student_config(teacher.config, args.distill))
    config = _config(args, out, args.max_steps, args.lr or 3e-3)
    data = {s: tokens[s] for s in ("train", "val")}
    result = distill(
        student, teacher, data, config, T=args.temperature, alpha=args.alpha, tokenizer=tok
    )
    print(
        f"distilled: {result.step} steps, val loss {result.val_loss:.4f} in "
        f"{result.elapsed_s:.0f} s"
    )
    return student


def student_config(teacher: GPTConfig, shape: str) -> GPTConfig:
    """The teacher's config with ``shape``'s fields, "n_layer=2,n_embd=96" (ints, or a float for
    dropout), replaced; the vocabulary stays the teacher's, so the soft targets line up."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(teacher)} - {"vocab_size"}
    changes = {}
    for item in filter(None, shape.replace(" ", "").split(",")):
        key, _, value = item.partition("=")
        if key not in fields or not value:
            raise UsageError(
                f"--distill {shape!r}: {item!r} is not field=value of a model field; use e.g. "
                f"n_layer=2,n_embd=96 (fields: {', '.join(sorted(fields))}; the vocabulary is "
                f"the teacher's)"
            )
        kind = type(getattr(teacher, key))
        try:
            changes[key] = (
                value if kind is str else kind(float(value) if kind is float else int(value))
            )
        except ValueError:
            raise UsageError(f"--distill: {key}={value!r} is not a {kind.__name__}") from None
    return dataclasses.replace(teacher, **changes)
