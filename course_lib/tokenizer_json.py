"""The tokenizer.json file format: how a `BPETokenizer` is saved, loaded and handed to Rust.

Lesson 01 (notebooks/01_tokenizer.ipynb) derives the tokenizer (course_lib.tokenizer) and then
saves it; this module is only the file format, what `BPETokenizer.save`, `load`, `to_json` and
`fast` call.

The format is Hugging Face's tokenizer.json rather than one of our own, so that `tokenizers`
(Rust) can load what we save and encode identically (the tests check it on the validation split),
and we can load a byte-level BPE that `tokenizers` trained. A tokenizer is three tables (vocab,
merges, special tokens); the file stores the tokens as strings, each byte spelled as one printable
character with GPT-2's byte↔unicode map, so that "Ġthe" is b" the".

    >>> from course_lib.tokenizer import BPETokenizer
    >>> tok = BPETokenizer()
    >>> tok.train("aaab aaab", vocab_size=259)
    >>> to_json(tok)["model"]["merges"]
    [['a', 'a'], ['a', 'b']]
    >>> save(tok, "tokenizer.json")
    >>> vocab, merges, special_tokens = load_tables("tokenizer.json")
    >>> merges, vocab[257], special_tokens
    ({(97, 97): 256, (97, 98): 257}, b'ab', {'<|endoftext|>': 258})
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from course_lib.errors import CourseError

if TYPE_CHECKING:
    import tokenizers

    from course_lib.tokenizer import BPETokenizer


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from each byte to a printable character, used to store bytes as JSON strings.

    Printable bytes map to themselves; the rest (space, control bytes, ...) are shifted to 256+.

    >>> bytes_to_unicode()[ord("a")], bytes_to_unicode()[ord(" ")]
    ('a', 'Ġ')
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    chars = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + n)
            n += 1
    return dict(sorted(chars.items()))


BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}


def token_to_str(token: bytes) -> str:
    """Token bytes -> its string in tokenizer.json.

    >>> token_to_str(b" the")
    'Ġthe'
    """
    return "".join(BYTE_TO_CHAR[b] for b in token)


def str_to_token(s: str) -> bytes:
    """Token string in tokenizer.json -> its bytes.

    >>> str_to_token("Ġthe")
    b' the'

    Like the ByteLevel decoder of `tokenizers`, a string with a character outside the byte
    alphabet (a special token such as "<unk>" is fine, "<|my token|>" has a space) is taken as
    its own UTF-8.
    """
    try:
        return bytes(CHAR_TO_BYTE[c] for c in s)
    except KeyError:
        return s.encode("utf-8")


# ------------------------------------------------------------------ writing


def to_json(tok: BPETokenizer) -> dict:
    """A tokenizer as a Hugging Face tokenizer.json dict (what `save` writes)."""
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": i,
                "content": s,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for s, i in tok.special_tokens.items()
        ],
        "normalizer": None,
        "pre_tokenizer": {**byte_level, "trim_offsets": True},
        "post_processor": {**byte_level, "trim_offsets": False},
        "decoder": {**byte_level, "trim_offsets": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {token_to_str(t): i for i, t in tok.vocab.items()},
            "merges": [
                [token_to_str(tok.vocab[a]), token_to_str(tok.vocab[b])] for a, b in tok.merges
            ],
        },
    }


def save(tok: BPETokenizer, path: str | Path) -> None:
    """Write tokenizer.json; `tokenizers.Tokenizer.from_file(path)` encodes identically."""
    Path(path).write_text(json.dumps(to_json(tok), ensure_ascii=False, indent=1), "utf-8")


def fast(tok: BPETokenizer) -> tokenizers.Tokenizer:
    """The same tokenizer as a Rust `tokenizers.Tokenizer`, built from its tokenizer.json."""
    from tokenizers import Tokenizer

    return Tokenizer.from_str(json.dumps(to_json(tok)))


# ------------------------------------------------------------------ reading


def load_tables(
    path: str | Path,
) -> tuple[dict[int, bytes], dict[tuple[int, int], int], dict[str, int]]:
    """(vocab, merges, special_tokens) of a byte-level BPE tokenizer.json: ours, or one that
    `tokenizers` trained. `BPETokenizer.load(path)` is a tokenizer holding these tables.

    Raises ValueError, naming the file, for anything that is not a byte-level BPE.
    """
    try:
        cfg = json.loads(Path(path).read_text("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CourseError(f"{path}: not a valid tokenizer.json ({e})") from e
    # Only what byte-level BPE uses is supported; anything that would change the ids
    # (a normalizer, dropout, prefix space, ...) is refused rather than ignored.
    model = cfg.get("model") if isinstance(cfg, dict) else None
    if not isinstance(model, dict) or model.get("type", "BPE") != "BPE":
        kind = model.get("type") if isinstance(model, dict) else None
        raise CourseError(f"{path}: model type is {kind!r}, expected a 'BPE' model")
    if not isinstance(model.get("vocab"), dict) or not isinstance(model.get("merges"), list):
        raise CourseError(f"{path}: the BPE model needs a 'vocab' dict and a 'merges' list")
    pre = cfg.get("pre_tokenizer") or {}
    if not (
        pre.get("type") == "ByteLevel"
        and pre.get("use_regex", True)
        and not pre.get("add_prefix_space", True)
    ):
        raise CourseError(
            f"{path}: pre_tokenizer is {pre or None}, expected a byte-level BPE: "
            "ByteLevel with use_regex=true and add_prefix_space=false (GPT-2's)"
        )
    if cfg.get("normalizer") is not None:
        raise CourseError(f"{path}: normalizer {cfg['normalizer']} is not supported")
    for key, default in [
        ("dropout", None),
        ("continuing_subword_prefix", None),
        ("end_of_word_suffix", None),
        ("byte_fallback", False),
        ("ignore_merges", False),
    ]:
        if model.get(key, default) not in (default, None, False):
            raise CourseError(f"{path}: BPE option {key}={model[key]!r} is not supported")
    for t in cfg.get("added_tokens", []):
        if t.get("lstrip") or t.get("rstrip") or t.get("single_word"):
            raise CourseError(f"{path}: added token {t} uses lstrip/rstrip/single_word")

    special_tokens = {t["content"]: t["id"] for t in cfg.get("added_tokens", [])}
    special_ids = set(special_tokens.values())
    str_vocab: dict[str, int] = model["vocab"]
    vocab = {i: str_to_token(s) for s, i in str_vocab.items() if i not in special_ids}
    merges: dict[tuple[int, int], int] = {}
    for m in model["merges"]:
        a, b = m.split(" ") if isinstance(m, str) else m
        if a not in str_vocab or b not in str_vocab or a + b not in str_vocab:
            raise CourseError(f"{path}: merge {m!r} uses a token that is not in the vocab")
        merges[str_vocab[a], str_vocab[b]] = str_vocab[a + b]
    # Encoding with an unk_token would turn a byte missing from the vocab into <unk>; without
    # one, `tokenizers` drops the byte, which is what `BPETokenizer.encode` does too.
    byte_tokens = {t for t in vocab.values() if len(t) == 1}
    if model.get("unk_token") is not None and len(byte_tokens) < 256:
        raise CourseError(
            f"{path}: an unk_token with bytes missing from the vocab is not supported "
            "(give every byte a token: ByteLevel.alphabet())"
        )
    return vocab, merges, special_tokens
