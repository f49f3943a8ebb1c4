"""How fast is course_lib's pure-Python BPE next to Hugging Face `tokenizers` (Rust)?

    .venv/bin/python benchmarks/bench_tokenizer.py                      # vocab 2048
    .venv/bin/python benchmarks/bench_tokenizer.py --vocab-size 2048 4096

Training: `BPETokenizer.train` vs `tokenizers`' BpeTrainer (byte-level alphabet, same
<|endoftext|> special token) on the pretraining plays, at the same vocabulary size. The
trainer gets the same single string as ours, and also the plays as a list, which lets it use
every core (our trainer uses one). Encoding: characters per second on the validation plays.
Times are the best of --repeats runs.
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from course_lib.data import load_splits
from course_lib.tokenizer import BPETokenizer


def load_plays() -> tuple[list[str], list[str]]:
    """(pretraining plays, validation plays), each a list of texts, from course_lib.data."""
    splits = load_splits()
    return [w.text for w in splits.train.values()], [w.text for w in splits.val.values()]


def best_time(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


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
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    train, val = load_plays()
    text, val_text = "\n".join(train), "\n".join(val)
    print(
        f"pretraining plays: {len(train)} ({len(text):,} chars); validation plays: {len(val)} "
        f"({len(val_text):,} chars); {os.cpu_count()} CPUs; best of {args.repeats}"
    )

    print(f"\n{'training':<36}{'vocab':>6}{'seconds':>9}{'ours / this':>13}")
    for vocab_size in args.vocab_size:
        t_ours, ours = best_time(lambda v=vocab_size: ours_train(text, v), args.repeats)
        t_one, hf = best_time(lambda v=vocab_size: hf_train([text], v), args.repeats)
        t_list, _ = best_time(lambda v=vocab_size: hf_train(train, v), args.repeats)
        print(f"{'course_lib BPETokenizer.train':<36}{vocab_size:>6}{t_ours:>9.2f}{'':>13}")
        print(f"{'tokenizers BpeTrainer, one string':<36}{vocab_size:>6}{t_one:>9.2f}"
              f"{t_ours / t_one:>12.2f}x")  # fmt: skip
        print(f"{'tokenizers BpeTrainer, list of plays':<36}{vocab_size:>6}{t_list:>9.2f}"
              f"{t_ours / t_list:>12.2f}x")  # fmt: skip

    # Encoding, with the tokenizers of the last vocab size. A fresh BPETokenizer has an empty
    # word cache ("cold"); encoding the same text again finds every word cached ("warm").
    tmp = tempfile.TemporaryDirectory()  # removed when the script ends
    path = Path(tmp.name) / "tokenizer.json"
    ours.save(path)
    fast = ours.fast()
    n = len(val_text)

    def cold():
        return BPETokenizer.load(path).encode(val_text)

    warm = BPETokenizer.load(path)
    warm.encode(val_text)
    rows = [
        ("tokenizers (its own trained BPE) encode", lambda: hf.encode(val_text).ids),
        ("course_lib encode, cold cache", cold),
        ("course_lib encode, warm cache", lambda: warm.encode(val_text)),
        ("course_lib fast().encode", lambda: fast.encode(val_text).ids),
        ("course_lib fast().encode_batch(plays)", lambda: fast.encode_batch(val)),
    ]
    header = f"encoding the validation plays (vocab {ours.vocab_size})"
    print(f"\n{header:<42}{'chars/s':>12}{'vs tokenizers':>15}")
    t_hf = None
    for name, fn in rows:
        t, ids = best_time(fn, args.repeats)
        t_hf = t_hf or t
        print(f"{name:<42}{n / t:>12,.0f}{t_hf / t:>14.2f}x")
        if name == "course_lib encode, cold cache":
            assert ids == fast.encode(val_text).ids, "pure-Python and fast path disagree"


if __name__ == "__main__":
    main()
