"""How fast is course_lib's pure-Python BPE next to Hugging Face `tokenizers` (Rust)?

    .venv/bin/python benchmarks/bench_tokenizer.py                      # vocab 2048
    .venv/bin/python benchmarks/bench_tokenizer.py --vocab-size 2048 4096
    .venv/bin/python benchmarks/bench_tokenizer.py --vocab-size 512 --rounds 1   # a smoke test

Training: `BPETokenizer.train` vs `tokenizers`' BpeTrainer (byte-level alphabet, same
<|endoftext|> special token) on the pretraining plays, at the same vocabulary size. The
trainer gets the same single string as ours, and also the plays as a list, which lets it use
every core (our trainer uses one); its speed is the pretraining plays' characters a second.
Encoding: characters per second on the validation plays. The ways of a table are timed side by
side (``course_lib.timing.compare``): after a warm-up call each, --rounds rounds that call every
way once in a rotating order; the median of the rounds, in brackets their middle half.
"""

import argparse
import os
import tempfile
from functools import partial
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from course_lib.data import load_splits
from course_lib.timing import compare
from course_lib.tokenizer import BPETokenizer


def load_plays() -> tuple[list[str], list[str]]:
    """(pretraining plays, validation plays), each a list of texts, from course_lib.data."""
    splits = load_splits()
    return [w.text for w in splits.train.values()], [w.text for w in splits.val.values()]


def hf_train(texts: list[str], vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"], show_progress=False,
    )  # fmt: skip
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def ours_train(text: str, vocab_size: int) -> BPETokenizer:
    tok = BPETokenizer()
    tok.train(text, vocab_size)
    return tok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vocab-size", type=int, nargs="+", default=[2048])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds, interleaved")
    args = parser.parse_args()

    train, val = load_plays()
    text, val_text = "\n".join(train), "\n".join(val)
    print(
        f"pretraining plays: {len(train)} ({len(text):,} chars); validation plays: {len(val)} "
        f"({len(val_text):,} chars); {os.cpu_count()} CPUs"
    )

    for vocab_size in args.vocab_size:
        cases = {
            "course_lib BPETokenizer.train": partial(ours_train, text, vocab_size),
            "tokenizers BpeTrainer, one string": partial(hf_train, [text], vocab_size),
            "tokenizers BpeTrainer, list of plays": partial(hf_train, train, vocab_size),
        }
        timings = compare(cases, rounds=args.rounds)
        print()
        print(timings.table(len(text), "chars/s", f"training, vocab {vocab_size}"))

    # Encoding, with the tokenizers of the last vocab size, trained once more (compare keeps no
    # results). A fresh BPETokenizer has an empty word cache ("cold"); encoding the same text
    # again finds every word cached ("warm").
    last = args.vocab_size[-1]
    ours, hf = ours_train(text, last), hf_train([text], last)
    tmp = tempfile.TemporaryDirectory()  # removed when the script ends
    path = Path(tmp.name) / "tokenizer.json"
    ours.save(path)
    fast = ours.fast()
    n = len(val_text)

    def cold():
        return BPETokenizer.load(path).encode(val_text)

    warm = BPETokenizer.load(path)
    warm.encode(val_text)
    assert cold() == fast.encode(val_text).ids, "pure-Python and fast path disagree"
    cases = {
        "tokenizers (its own trained BPE) encode": lambda: hf.encode(val_text).ids,
        "course_lib encode, cold cache": cold,
        "course_lib encode, warm cache": lambda: warm.encode(val_text),
        "course_lib fast().encode": lambda: fast.encode(val_text).ids,
        "course_lib fast().encode_batch(plays)": lambda: fast.encode_batch(val),
    }
    timings = compare(cases, rounds=args.rounds)
    print()
    print(timings.table(n, "chars/s", f"encoding the validation plays (vocab {ours.vocab_size})"))


if __name__ == "__main__":
    main()
