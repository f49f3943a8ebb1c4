"""Checkers for the exercises of Lesson 01 (notebooks/01_tokenizer.ipynb)."""

from __future__ import annotations

from itertools import pairwise

from course_lib.exercises import call, checker
from course_lib.tokenizer import merge

_IDS = [
    list(b"aaabdaaabac"),  # the classic BPE example: "aa" occurs (overlapping) 4 times
    [1, 2, 1, 2, 1, 2],
    [5],
    [],
]


# Merges learned from a short text with accents and an emoji, so that some tokens hold only
# part of a character's UTF-8 bytes.
_ACCENTED = "café naïve déjà vu, the café, a naïve café 🎭🎭 déjà " * 3


def _accented_tokenizer():  # -> BPETokenizer
    from course_lib.tokenizer import BPETokenizer

    tok = BPETokenizer()
    tok.train(_ACCENTED, vocab_size=256 + 20 + 1)
    return tok


def _vocab(merges: dict[tuple[int, int], int]) -> dict[int, bytes]:
    vocab = {i: bytes([i]) for i in range(256)}
    for (a, b), new_id in merges.items():
        vocab[new_id] = vocab[a] + vocab[b]
    return vocab


def _whole(piece: bytes) -> bool:
    """Whether ``piece`` is valid UTF-8 on its own (no character cut in two)."""
    try:
        piece.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@checker(
    "decode",
    "Every id stands for a string of bytes: a byte's id for itself, a merge's id for its two "
    "parts joined. Join the bytes of all the ids, then turn the bytes into text; a token may "
    "hold only part of a character.",
    "vocab = {i: bytes([i]) for i in range(256)}, then vocab[new] = vocab[a] + vocab[b] for "
    "each merge in order; b''.join(vocab[i] for i in ids).decode('utf-8', errors='replace').",
)
def check_decode(fn) -> str | None:
    """Check ``fn(ids, merges) -> str``: token ids back to text, as ``BPETokenizer.decode``."""
    tok = _accented_tokenizer()
    merges = dict(tok.merges)
    vocab = _vocab(merges)
    cases = [tok.encode(t) for t in ("café naïve", "déjà vu 🎭", "the end", "")]
    cases += [[i] for i in range(256, 256 + len(merges)) if not _whole(vocab[i])][:2]
    cases.append(list("🎭".encode())[:2])  # a character cut short: not valid UTF-8
    for ids in cases:
        want = b"".join(vocab[i] for i in ids).decode("utf-8", errors="replace")
        try:
            got = call(fn, list(ids), dict(merges))
        except UnicodeDecodeError:
            return (
                f"decoding {ids} raised UnicodeDecodeError: ids can end inside a character (a "
                "model may generate any id), so decode with errors='replace', which writes � "
                "for the broken bytes"
            )
        if isinstance(got, bytes):
            return "that returns the bytes: turn them into text with .decode('utf-8', ...)"
        if not isinstance(got, str):
            return f"return the text, a str, got {type(got).__name__}"
        if got == want:
            continue
        if got == b"".join(vocab[i] for i in ids).decode("utf-8", errors="ignore"):
            return (
                f"on {ids} the broken bytes vanished: errors='ignore' drops them silently; "
                "errors='replace' shows each as �, so a reader sees that something was cut"
            )
        per_token = "".join(vocab[i].decode("utf-8", errors="replace") for i in ids)
        if got == per_token:
            return (
                f"on {ids} you decoded each token on its own: a token may hold half of a "
                "character's bytes (é is 2 bytes, 🎭 is 4), so join all the bytes first and "
                f"decode once (expected {want!r}, got {got!r})"
            )
        swapped = {i: bytes([i]) for i in range(256)}
        for (a, b), new_id in merges.items():
            swapped[new_id] = swapped[b] + swapped[a]
        if got == b"".join(swapped[i] for i in ids).decode("utf-8", errors="replace"):
            return (
                f"on {ids} the parts of a merge are joined the wrong way round: the merge "
                "(a, b) stands for a's bytes, then b's"
            )
        return f"the ids {ids} should decode to {want!r}, got {got!r}"
    return None


# A few merges learned from a short text, in the order they were learned: some build on
# others (" th" needs "th" first), so the order in which they are applied matters.
_TEXT = "the other thee that then there these those the the he she then other " * 4
_WORDS = ["the", " there", " other", " those", " she", "xyz", "t", ""]


def _merges() -> dict[tuple[int, int], int]:
    from course_lib.tokenizer import BPETokenizer

    tok = BPETokenizer()
    tok.train(_TEXT, vocab_size=256 + 14 + 1)
    return dict(tok.merges)


def _encode_word(ids: list[int], merges: dict[tuple[int, int], int]) -> list[int]:
    while len(ids) >= 2:
        pair = min(pairwise(ids), key=lambda p: merges.get(p, float("inf")))
        if pair not in merges:
            return ids
        ids = merge(ids, pair, merges[pair])
    return ids


@checker(
    "encode_word",
    "Apply the learned merges until no neighbouring pair of the word is one of them, the "
    "earliest-learned first: a later merge may need an id that an earlier one made.",
    "Loop: among pairwise(ids), take the pair with the smallest merges.get(pair, inf); stop if "
    "it is not in merges, else ids = merge(ids, pair, merges[pair]).",
)
def check_encode_word(fn) -> str | None:
    """Check ``fn(ids, merges) -> list[int]``: a word's bytes encoded with learned merges."""
    merges = _merges()
    wrong = []  # (word, what it should be, what it was, the mistakes that explain it)
    for word in _WORDS:
        ids = list(word.encode("utf-8"))
        original, given = list(ids), dict(merges)
        got = call(fn, ids, given)
        want = _encode_word(original, merges)
        if ids != original or given != merges:
            return "don't change the ids or the merges you were given: build a new list"
        if not isinstance(got, list):
            return f"return a list of ids, got {type(got).__name__}"
        if got != want:
            wrong.append((word, want, got, _mistakes(original, merges, got)))
    if not wrong:
        return None
    # A word that only one mistake explains tells which it is.
    word, want, got, mistakes = min(wrong, key=lambda w: len(w[3]) != 1)
    if len(mistakes) == 1:
        return f"on {word!r} {mistakes[0]}"
    return f"{word!r} ({list(word.encode())}) should encode to {want}, got {got}"


def _mistakes(ids: list[int], merges: dict[tuple[int, int], int], got: list[int]) -> list[str]:
    found = []
    reverse = list(ids)
    for pair, new_id in reversed(merges.items()):
        reverse = merge(reverse, pair, new_id)
    if got == reverse:
        found.append(
            "the merges were applied last-learned first: a later merge joins ids that earlier "
            "merges made, so apply the earliest first"
        )
    once = min(pairwise(ids), key=lambda p: merges.get(p, float("inf")), default=None)
    if once in merges and got == merge(ids, once, merges[once]):
        found.append("only one merge was applied: keep merging while a pair matches")
    return found


@checker(
    "less_text",
    "Train a new BPETokenizer to the course's size, 2048 tokens, on the first tenth of the "
    "training text only, and return it.",
    "tok = BPETokenizer(); tok.train(train_text[: len(train_text) // 10], vocab_size=2048).",
)
def check_less_text(fn) -> str | None:
    """Check the experiment ``fn(train_text) -> BPETokenizer``: the course's tokenizer size
    trained on a tenth of the text. Passes when it is, and measures what less text costs:
    bytes per token on the held-out plays, against the course tokenizer's."""
    from course_lib.data import course_tokenizer, load_splits
    from course_lib.tokenizer import BPETokenizer

    splits = load_splits()
    train, val = splits.text("train"), splits.text("val")
    tok = call(fn, train)
    if not isinstance(tok, BPETokenizer):
        return f"return the trained BPETokenizer, got {type(tok).__name__}"
    if tok.vocab_size != 2048:
        return f"train it to the course's size, vocab_size=2048, got {tok.vocab_size}"
    want = BPETokenizer()
    want.train(train[: len(train) // 10], vocab_size=2048)
    if tok.merges != want.merges:
        return "its merges differ from training on train_text[: len(train_text) // 10]"
    size = len(val.encode("utf-8"))
    per_token = {
        name: size / len(t.fast().encode(val).ids)
        for name, t in [("a tenth of the text", tok), ("all of it", course_tokenizer())]
    }
    print(
        "bytes per token on the held-out plays: "
        + ", ".join(f"{v:.3f} trained on {k}" for k, v in per_token.items())
    )
    if not per_token["a tenth of the text"] < per_token["all of it"]:
        return "less text compressed as well: compare on the held-out plays again"
    return None
