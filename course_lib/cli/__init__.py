"""The ``course-lib`` command: the course's pieces from a terminal.

    course-lib info                  versions, device, where data and checkpoints live
    course-lib prepare               download, verify and split the corpus, then tokenize it
    course-lib tokenizer train|encode|decode   train a BPE tokenizer on any text, or use one
    course-lib train                 pretrain a GPT on the corpus or on your own text (torchrun too)
    course-lib sample                write text with a trained model, streamed as it comes
    course-lib finetune              fine-tune a checkpoint on the poems or your text (LoRA too)
    course-lib eval                  nats/token and bits/char of any checkpoint on any text
    course-lib compress              quantize, prune or distill a checkpoint into a smaller one

Each lesson adds its command; one module here per group of commands (corpus, train, sample,
finetune, evaluate, compress), each with a ``register`` that adds its parsers.

Exit status: 0 when a command succeeds; 1 for a clear error (a ``CourseError``, a missing
file), its message printed without a traceback; 2 for bad usage, from argparse or a
``UsageError`` (options that do not go together). Anything else is a bug: its traceback shows.
"""

from __future__ import annotations

import argparse
import sys

from course_lib.cli import compress, corpus, evaluate, finetune, sample, train
from course_lib.errors import CourseError, UsageError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="course-lib", description="Build a GPT from scratch: the course's command line."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for commands in (corpus, train, sample, finetune, evaluate, compress):  # in lesson order
        commands.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except UsageError as err:  # as argparse reports bad usage, the options named in the message
        print(f"course-lib {args.command}: error: {err}", file=sys.stderr)
        return 2
    except (CourseError, FileNotFoundError) as err:  # clear: the message says what to do
        print(f"course-lib {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
