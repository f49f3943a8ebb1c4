"""Byte-level BPE tokenizer, the GPT-2 way, in plain Python.

Lesson 01 (notebooks/01_tokenizer.ipynb) derives this, step by step.

Text becomes UTF-8 bytes, so ids 0..255 can encode anything. Training then repeatedly
merges the most frequent adjacent pair of ids into a new id (256, 257, ...). Before
counting, the text is cut into "words" with GPT-2's regex, so a merge never crosses a
word/space/punctuation boundary (no token like "dog." or "e the"). Special tokens such as
<|endoftext|> are cut out first and get the ids after the merges.

The file format is Hugging Face's tokenizer.json, so `tokenizers` (Rust) can load what we save
and encode identically, and we can load a byte-level BPE that `tokenizers` trained; the format
lives in course_lib.tokenizer_json, and `save`, `load`, `to_json` and `fast` call into it.

    >>> tok = BPETokenizer()
    >>> tok.train("the cat sat on the mat. " * 50, vocab_size=266)
    >>> ids = tok.encode("the cat<|endoftext|>")
    >>> ids
    [258, 264, 265]
    >>> [tok.decode([i]) for i in ids]
    ['the', ' cat', '<|endoftext|>']
    >>> tok.save("tokenizer.json")
    >>> BPETokenizer.load("tokenizer.json").encode("the cat<|endoftext|>")
    [258, 264, 265]
"""

from __future__ import annotations

import heapq
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable
from operator import index
from pathlib import Path
from typing import TYPE_CHECKING

import regex

from course_lib import tokenizer_json
from course_lib.errors import CourseError

if TYPE_CHECKING:
    import tokenizers

GPT2_SPLIT_PATTERN = (
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)
SPECIAL_MODES = ("allow", "raise", "plain")


def merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every occurrence of `pair`, left to right, by `new_id`.

    >>> merge([1, 1, 1, 2], (1, 1), 9)
    [9, 1, 2]
    """
    a, b = pair
    out = []
    i, n = 0, len(ids)
    while i < n:
        if ids[i] == a and i + 1 < n and ids[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


class BPETokenizer:
    """A byte-level BPE tokenizer: `train`, `encode`, `decode`, `save`, `load`.

    The state is three tables, which is all a BPE tokenizer is:
        vocab           id -> bytes                   {104: b'h', ..., 300: b' the'}
        merges          (id, id) -> new id, in the order they were learned (= their rank)
        special_tokens  str -> id                     {'<|endoftext|>': 2047}
    """

    def __init__(self) -> None:
        self.vocab: dict[int, bytes] = {i: bytes([i]) for i in range(256)}
        self.merges: dict[tuple[int, int], int] = {}
        self.special_tokens: dict[str, int] = {}
        self._rebuild()

    # ------------------------------------------------------------------ training

    def train(
        self,
        text: str,
        vocab_size: int,
        special_tokens: tuple[str, ...] = ("<|endoftext|>",),
        verbose: bool = False,
    ) -> None:
        """Learn `vocab_size - 256 - len(special_tokens)` merges from `text`.

        >>> tok = BPETokenizer()
        >>> tok.train("aaab aaab", vocab_size=259)
        >>> tok.merges, tok.special_tokens
        ({(97, 97): 256, (97, 98): 257}, {'<|endoftext|>': 258})

        Each step merges the pair with the highest count; a tie goes to the smallest pair of
        ids, compared as tuples: (97, 98) before (97, 99) before (256, 97). Above, "aa" (4
        times) is merged first, then "ab" and "<256>a" tie at 2 and "ab" wins. This is the rule
        of the `tokenizers` trainer, applied to our ids (its ids are ordered differently).

        If the text runs out of pairs before `vocab_size` is reached, training stops early
        with a warning (as `tokenizers` stops, silently) and the vocabulary is smaller.

        Counting is incremental: the text is reduced to its unique words with their
        frequencies, and a merge re-counts only the words that contain the merged pair.
        """
        special_tokens = tuple(special_tokens)
        n_min = 256 + len(special_tokens)
        if not isinstance(vocab_size, int) or vocab_size < n_min:
            n = len(special_tokens)
            raise CourseError(
                f"vocab_size must be at least {n_min} (256 bytes + {n} special token"
                f"{'s' if n != 1 else ''}), got {vocab_size!r}"
            )
        if not text:
            raise CourseError("cannot train on empty text: pass the training corpus as one string")
        for s in special_tokens:
            if not s:
                raise CourseError(f"special tokens must be non-empty strings, got {special_tokens}")
        if len(set(special_tokens)) != len(special_tokens):
            raise CourseError(f"special tokens must be distinct, got {special_tokens}")

        # Unique words and how often each occurs: the merges only ever look at these.
        # Special tokens are cut out first so that no merge can span one.
        counts: Counter[str] = Counter()
        for part in _split_specials(text, special_tokens)[::2]:
            counts.update(regex.findall(GPT2_SPLIT_PATTERN, part))
        words = [list(w.encode("utf-8")) for w in counts]
        freqs = list(counts.values())

        # pair -> total count, and pair -> the words it occurs in (may list a few extra words
        # whose pair was merged away since: they are skipped when met).
        pair_counts: dict[tuple[int, int], int] = defaultdict(int)
        where: dict[tuple[int, int], set[int]] = defaultdict(set)
        for i, (w, f) in enumerate(zip(words, freqs, strict=True)):
            for pair in zip(w, w[1:]):
                pair_counts[pair] += f
                where[pair].add(i)
        # Max-heap of (-count, pair). Entries go stale as counts change; a popped entry whose
        # count is out of date is pushed back with the right one ("lazy invalidation").
        heap = [(-c, p) for p, c in pair_counts.items()]
        heapq.heapify(heap)

        vocab = {i: bytes([i]) for i in range(256)}
        ids_of = {t: i for i, t in vocab.items()}
        merges: dict[tuple[int, int], int] = {}
        n_merges = vocab_size - n_min
        while len(vocab) < 256 + n_merges:
            pair, count = _pop_top(heap, pair_counts)
            if pair is None:
                warnings.warn(
                    f"the training text has no pairs left to merge after {len(merges)} merges: "
                    f"vocabulary size is {len(vocab) + len(special_tokens)}, not {vocab_size}; "
                    "train on more text for a larger vocabulary",
                    stacklevel=2,
                )
                break
            token = vocab[pair[0]] + vocab[pair[1]]
            # Rarely, two different pairs spell the same bytes (a+bc, ab+c); like `tokenizers`
            # we keep one id per byte string and let both merges produce it.
            new_id = ids_of.setdefault(token, len(vocab))
            vocab[new_id] = token
            merges[pair] = new_id
            if verbose:
                print(f"merge {len(merges)}: {pair} -> {new_id} {token!r} ({count} occurrences)")

            # Re-count only the words that contain the pair: subtract their old pairs, add new.
            delta: dict[tuple[int, int], int] = defaultdict(int)
            for i in where.pop(pair):
                w = words[i]
                new = merge(w, pair, new_id)
                if len(new) == len(w):
                    continue  # stale entry: this word no longer has the pair
                f = freqs[i]
                for p in zip(w, w[1:]):
                    delta[p] -= f
                for p in zip(new, new[1:]):
                    delta[p] += f
                    if new_id in p:
                        where[p].add(i)
                words[i] = new
            for p, d in delta.items():
                if d:
                    pair_counts[p] += d
                    if d > 0:  # a count that went up needs a fresh heap entry
                        heapq.heappush(heap, (-pair_counts[p], p))

        self.vocab = vocab
        self.merges = merges
        self.special_tokens = {s: len(vocab) + k for k, s in enumerate(special_tokens)}
        self._rebuild()

    # ------------------------------------------------------------------ encoding

    def encode(self, text: str, special: str = "allow") -> list[int]:
        """Text -> token ids.

        >>> tok = BPETokenizer()
        >>> tok.train("aaab aaab", vocab_size=259)
        >>> tok.encode("aaab<|endoftext|>")
        [256, 257, 258]
        >>> tok.encode("aaab<|endoftext|>", special="plain")  # doctest: +ELLIPSIS
        [256, 257, 60, 124, 101, ..., 62]

        `special` says what an exact special-token string in the text becomes:
            "allow" (default)  its single id, as `tokenizers` does with its added tokens;
            "raise"            ValueError, naming the token and where it is (for text from
                               users, who should not be able to inject an end-of-text);
            "plain"            ordinary text, encoded byte by byte like any other.
        """
        if special not in SPECIAL_MODES:
            raise CourseError(f"special must be one of {SPECIAL_MODES}, got {special!r}")
        if special == "plain" or not self.special_tokens:
            return self._encode_ordinary(text)
        if special == "raise":
            m = self._special_re.search(text)
            if m:
                raise CourseError(
                    f"text contains the special token {m.group()!r} at character {m.start()}; "
                    f"pass special='allow' to encode it as id {self.special_tokens[m.group()]}, "
                    "or special='plain' to encode it as ordinary text"
                )
            return self._encode_ordinary(text)
        ids: list[int] = []
        parts = _split_specials(text, self.special_tokens, self._special_re)
        for k, part in enumerate(parts):
            if k % 2:
                ids.append(self.special_tokens[part])
            else:
                ids.extend(self._encode_ordinary(part))
        return ids

    def _encode_ordinary(self, text: str) -> list[int]:
        ids: list[int] = []
        cache = self._cache
        # Text repeats its words a lot, so each distinct word is merged once and then looked up.
        for word in regex.findall(GPT2_SPLIT_PATTERN, text):
            word_ids = cache.get(word)
            if word_ids is None:
                word_ids = cache[word] = self._encode_word(word)
            ids.extend(word_ids)
        return ids

    def _encode_word(self, word: str) -> list[int]:
        # Apply the learned merges in the order they were learned: at each step, merge the
        # pair present with the lowest rank, until no pair present has been learned.
        ids = [self._byte_ids[b] for b in word.encode("utf-8")]
        if None in ids:  # only a loaded vocab can lack a byte; `tokenizers` then drops it
            ids = [i for i in ids if i is not None]
        ranks = self._ranks
        while len(ids) >= 2:
            pair = min(zip(ids, ids[1:]), key=lambda p: ranks.get(p, len(ranks)))
            if pair not in ranks:
                break
            ids = merge(ids, pair, self.merges[pair])
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Token ids (ints, or anything int-like: numpy or torch integers) -> text.

        >>> BPETokenizer().decode([104, 105, 240, 159, 152, 128])
        'hi😀'
        >>> BPETokenizer().decode([240, 159])  # half a character: not UTF-8
        '�'
        """
        ids = [index(i) for i in ids]
        try:
            data = b"".join([self._id_to_bytes[i] for i in ids])
        except KeyError as e:
            bad = e.args[0]
            raise CourseError(
                f"token id {bad!r} is not in the vocabulary (size {self.vocab_size}): "
                "ids must come from this tokenizer's encode()"
            ) from e
        return data.decode("utf-8", errors="replace")

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""
        return len(self._id_to_bytes)

    @property
    def eot_id(self) -> int | None:
        """The id of <|endoftext|>, or None if this tokenizer has no such token."""
        return self.special_tokens.get("<|endoftext|>")

    # ------------------------------------------------------------------ tokenizer.json

    def fast(self) -> tokenizers.Tokenizer:
        """The same tokenizer as a Rust `tokenizers.Tokenizer` (same ids, same text).

        >>> tok = BPETokenizer()
        >>> tok.train("aaab aaab", vocab_size=259)
        >>> tok.fast().encode("aaab<|endoftext|>").ids
        [256, 257, 258]

        Its `encode_batch(list_of_texts)` encodes many documents on all CPU cores. On one string
        it is no faster than `encode`, whose word cache does well on a corpus like ours; and
        it is what `transformers` can wrap (PreTrainedTokenizerFast(tokenizer_object=...)).
        """
        return tokenizer_json.fast(self)

    def to_json(self) -> dict:
        """This tokenizer as a Hugging Face tokenizer.json dict (what `save` writes)."""
        return tokenizer_json.to_json(self)

    def save(self, path: str | Path) -> None:
        """Write tokenizer.json; `tokenizers.Tokenizer.from_file(path)` encodes identically."""
        tokenizer_json.save(self, path)

    @classmethod
    def load(cls, path: str | Path) -> BPETokenizer:
        """Read a byte-level BPE tokenizer.json: ours, or one that `tokenizers` trained.

        >>> from course_lib.data import prepare_tokens
        >>> BPETokenizer.load(prepare_tokens() / "tokenizer.json").vocab_size  # the course's
        2048
        """
        tok = cls()
        tok.vocab, tok.merges, tok.special_tokens = tokenizer_json.load_tables(path)
        tok._rebuild()
        return tok

    def _rebuild(self) -> None:
        # Lookup tables derived from vocab/merges/special_tokens, for encode and decode.
        self._ranks = {pair: r for r, pair in enumerate(self.merges)}
        byte_ids = {t[0]: i for i, t in self.vocab.items() if len(t) == 1}
        self._byte_ids: list[int | None] = [byte_ids.get(b) for b in range(256)]
        self._id_to_bytes = dict(self.vocab)
        for s, i in self.special_tokens.items():
            self._id_to_bytes[i] = s.encode("utf-8")
        self._special_re = _special_regex(self.special_tokens)
        self._cache: dict[str, list[int]] = {}


def _special_regex(special_tokens: Iterable[str]) -> regex.Pattern | None:
    # Longest first, so that of two specials starting at the same place the longer one wins
    # (`tokenizers` matches added tokens leftmost-longest too).
    tokens = sorted(special_tokens, key=len, reverse=True)
    if not tokens:
        return None
    return regex.compile("(" + "|".join(regex.escape(s) for s in tokens) + ")")


def _split_specials(
    text: str, special_tokens: Iterable[str], pattern: regex.Pattern | None = None
) -> list[str]:
    """Split around special tokens: [text, special, text, special, ..., text].

    >>> _split_specials("a<|endoftext|>b", ["<|endoftext|>"])
    ['a', '<|endoftext|>', 'b']
    """
    pattern = pattern or _special_regex(special_tokens)
    return pattern.split(text) if pattern else [text]


def _pop_top(
    heap: list[tuple[int, tuple[int, int]]], pair_counts: dict[tuple[int, int], int]
) -> tuple[tuple[int, int] | None, int]:
    # The pair with the highest count (then the smallest ids), skipping stale heap entries.
    while heap:
        neg, pair = heapq.heappop(heap)
        count = pair_counts[pair]
        if -neg == count:
            if count > 0:
                return pair, count
        elif count > 0:
            heapq.heappush(heap, (-count, pair))
    return None, 0
