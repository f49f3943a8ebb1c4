"""course_lib.tokenizer: each test states one behaviour and, where there is one, its reference.

The reference is Hugging Face `tokenizers` (Rust): it must load the tokenizer.json we save and
produce the same ids and text, and its BPE trainer must learn the same merges where the
choice of merge is not a tie.
"""

import json
import random
from collections import Counter

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from course_lib.tokenizer import GPT2_SPLIT_PATTERN, BPETokenizer, merge
from course_lib.tokenizer_json import str_to_token

TRAIN_PLAYS = ("hamlet", "lear", "othello")  # a few pretraining plays: enough, and fast


@pytest.fixture(scope="module")
def train_text(splits) -> str:
    return "\n".join(splits.train[name].text for name in TRAIN_PLAYS)


@pytest.fixture(scope="module")
def val_text(splits) -> str:
    """The validation split: 4 plays, about 470K characters."""
    return splits.text("val")


def random_words_text(seed: int, n_words: int = 400) -> str:
    """Random made-up words, each repeated a random number of times: pair counts rarely tie."""
    rng = random.Random(seed)
    words = [
        "".join(rng.choices("abcdefghijklmnopqrstuvwxyzéß'.,!", k=rng.randint(2, 7)))
        for _ in range(n_words)
    ]
    text = [w for w in words for _ in range(rng.randint(1, 300))]
    rng.shuffle(text)
    return " ".join(text)


# A small multilingual text, so that the corpus-free tests have merges of every kind.
SMALL_TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\r\n\r\n"
    "All:\tSpeak, speak.  You are all resolved rather to die than to famish?\n"
    "Café naïve über straße — 東京は日本の首都です。 Emoji: 😀👍🏽 don't we'll it's 1984 3.14\n"
    "<|endoftext|>"
) * 20


@pytest.fixture(scope="module")
def small_tok() -> BPETokenizer:
    tok = BPETokenizer()
    tok.train(SMALL_TEXT, vocab_size=400)
    return tok


@pytest.fixture(scope="module")
def small_hf(small_tok, tmp_path_factory) -> Tokenizer:
    path = tmp_path_factory.mktemp("small") / "tokenizer.json"
    small_tok.save(path)
    return Tokenizer.from_file(str(path))


@pytest.fixture(scope="module")
def play_tok(train_text) -> BPETokenizer:
    tok = BPETokenizer()
    tok.train(train_text, vocab_size=1024)
    return tok


@pytest.fixture(scope="module")
def play_hf(play_tok, tmp_path_factory) -> Tokenizer:
    path = tmp_path_factory.mktemp("plays") / "tokenizer.json"
    play_tok.save(path)
    return Tokenizer.from_file(str(path))


def hf_decode(hf: Tokenizer, ids: list[int]) -> str:
    return hf.decode(ids, skip_special_tokens=False)


EDGE_STRINGS = [
    "",
    " ",
    "   ",
    "\n",
    "\n\n\n",
    "\r\n",
    "line one\r\nline two\r\n\r\n",
    "\t",
    "\t\tindented\t",
    "  two  spaces  ",
    "trailing space ",
    "word\n  indented after newline",
    "Café naïve über straße",
    "東京は日本の首都です。",
    "emoji 😀👍🏽 family 👨\u200d👩\u200d👧 flags 🇫🇷",
    "\u00a0no-break\u2009thin\u3000ideographic space",
    "\x00\x01\x1f\x7f control bytes",
    "don't I'll we've THEY'RE it's",
    "123 4567 3.14 ½ ²",
    "<|endoftext|>",
    "before<|endoftext|>after",
    "hello <|endoftext|> world",
    "<|endoftext|><|endoftext|><|endoftext|>",
    "<|endoftext|>\n<|endoftext|>",
    "<|endoftext",
    "<|endoftext|>|>",
    "a" * 10000,
    " " * 5000,
    "ab" * 3000,
    "\n" * 1000 + "x",
]


# ---------------------------------------------------------------------------------------------
# Encoding and decoding agree with `tokenizers`.


def test_ids_equal_hf_tokenizers_on_validation_split(play_tok, play_hf, val_text):
    assert play_tok.encode(val_text) == play_hf.encode(val_text).ids


def test_decode_equals_text_and_hf_tokenizers_on_validation_split(play_tok, play_hf, val_text):
    ids = play_tok.encode(val_text)
    assert play_tok.decode(ids) == val_text == hf_decode(play_hf, ids)


@pytest.mark.parametrize("text", EDGE_STRINGS, ids=lambda s: repr(s[:20]) + f"_len{len(s)}")
def test_ids_and_decode_equal_hf_tokenizers_on_edge_strings(small_tok, small_hf, text):
    ids = small_tok.encode(text)
    assert ids == small_hf.encode(text).ids
    assert small_tok.decode(ids) == text == hf_decode(small_hf, ids)


def test_decode_of_a_cut_utf8_sequence_equals_hf_tokenizers(small_tok, small_hf):
    # Cutting 😀 (4 bytes) after 2 bytes leaves invalid UTF-8: both give U+FFFD.
    ids = small_tok.encode("a 😀 b", special="plain")
    for k in range(len(ids) + 1):
        assert small_tok.decode(ids[:k]) == hf_decode(small_hf, ids[:k])


def text_of(chars: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Text from `chars`, with special tokens and whitespace runs mixed in (the subtle cases)."""
    pieces = st.sampled_from(["<|endoftext|>", " ", "  ", "\n", "\r\n", "\t", " \n ", "'s"])
    return st.lists(st.one_of(st.text(chars), pieces), max_size=8).map("".join)


# Any Unicode text except lone surrogates, which UTF-8 cannot encode.
unicode_text = text_of(st.characters(exclude_categories=("Cs",)))
# The same less code points unassigned in Python's Unicode data (14.0): `regex` knows a newer
# Unicode than `tokenizers` (Oniguruma), and 17,480 such code points, all unassigned in 14.0,
# are letters to one and not the other, so the two can pre-tokenise them differently.
assigned_text = text_of(st.characters(exclude_categories=("Cs", "Cn")))


@settings(max_examples=300, deadline=None)
@given(text=unicode_text)
def test_decode_encode_round_trips_any_unicode_text(small_tok, text):
    assert small_tok.decode(small_tok.encode(text)) == text


@settings(max_examples=300, deadline=None)
@given(text=assigned_text)
def test_ids_equal_hf_tokenizers_on_any_assigned_unicode_text(small_tok, small_hf, text):
    assert small_tok.encode(text) == small_hf.encode(text).ids


def test_fast_path_gives_the_same_ids_as_encode(small_tok):
    text = SMALL_TEXT[:500]
    assert small_tok.fast().encode(text).ids == small_tok.encode(text)


# ---------------------------------------------------------------------------------------------
# Special tokens.


def test_special_allow_encodes_a_special_token_as_its_single_id(small_tok):
    eot = small_tok.eot_id
    assert small_tok.encode("a<|endoftext|>b") == [
        *small_tok.encode("a"),
        eot,
        *small_tok.encode("b"),
    ]


def test_special_plain_encodes_a_special_token_as_ordinary_text(small_tok):
    ids = small_tok.encode("<|endoftext|>", special="plain")
    assert small_tok.eot_id not in ids
    assert small_tok.decode(ids) == "<|endoftext|>"


def test_special_raise_names_the_token_its_position_and_the_fix(small_tok):
    with pytest.raises(ValueError, match=r"'<\|endoftext\|>' at character 5.*special='allow'"):
        small_tok.encode("hello<|endoftext|>", special="raise")
    assert small_tok.encode("hello", special="raise") == small_tok.encode("hello")


def test_bad_special_argument_is_rejected(small_tok):
    with pytest.raises(ValueError, match=r"special must be one of .*'allow'.*got 'yes'"):
        small_tok.encode("hi", special="yes")


def test_no_merge_spans_a_special_token():
    tok = BPETokenizer()
    # Without cutting out <|endoftext|>, "<|" would tie with "he" and win (smaller ids).
    tok.train("hello world<|endoftext|>" * 200, vocab_size=260)
    assert all(b"<" not in t and b"|" not in t for i, t in tok.vocab.items() if i >= 256)


# ---------------------------------------------------------------------------------------------
# Training.


def test_ids_are_bytes_then_merges_then_special_tokens(small_tok):
    assert all(small_tok.vocab[i] == bytes([i]) for i in range(256))
    assert sorted(small_tok.merges.values()) == list(range(256, 256 + len(small_tok.merges)))
    assert small_tok.special_tokens == {"<|endoftext|>": 256 + len(small_tok.merges)}
    assert small_tok.vocab_size == 400


def test_no_learned_token_crosses_a_gpt2_pre_token_boundary(play_tok):
    for token in play_tok.vocab.values():
        text = token.decode("utf-8", errors="ignore")
        assert len(regex.findall(GPT2_SPLIT_PATTERN, text)) <= 1, token


def naive_train(text: str, n_merges: int) -> tuple[list[tuple[bytes, bytes]], list[bool]]:
    """The minbpe way, as a reference: re-count every pair of every word at every merge.

    (It does count each distinct word once, times its frequency, to keep the test fast.)
    Returns the merges as byte strings and, for each merge, whether its count was tied.
    """
    word_counts = Counter(regex.findall(GPT2_SPLIT_PATTERN, text))
    words = [list(w.encode()) for w in word_counts]
    vocab = {i: bytes([i]) for i in range(256)}
    merges, tied = [], []
    for new_id in range(256, 256 + n_merges):
        counts: Counter[tuple[int, int]] = Counter()
        for w, n in zip(words, word_counts.values(), strict=True):
            for pair in zip(w, w[1:]):
                counts[pair] += n
        if not counts:
            break
        best = max(counts.values())
        top = [pair for pair, c in counts.items() if c == best]
        pair = min(top)  # the documented tie rule: the smallest pair of ids
        merges.append((vocab[pair[0]], vocab[pair[1]]))
        tied.append(len(top) > 1)
        vocab[new_id] = vocab[pair[0]] + vocab[pair[1]]
        words = [merge(w, pair, new_id) for w in words]
    return merges, tied


def merges_as_bytes(tok: BPETokenizer) -> list[tuple[bytes, bytes]]:
    return [(tok.vocab[a], tok.vocab[b]) for a, b in tok.merges]


def test_incremental_training_equals_naive_full_recount_ties_included():
    text = random_words_text(seed=3, n_words=150)
    tok = BPETokenizer()
    tok.train(text, vocab_size=256 + 200, special_tokens=())
    merges, tied = naive_train(text, 200)
    assert sum(tied) > 10  # the tie rule is exercised
    assert merges_as_bytes(tok) == merges


def test_training_equals_hf_bpe_trainer_where_counts_do_not_tie():
    text = random_words_text(seed=5)
    merges, tied = naive_train(text, 120)
    n = tied.index(True) if True in tied else len(tied)  # merges before the first tie
    assert n >= 50

    tok = BPETokenizer()
    tok.train(text, vocab_size=256 + n, special_tokens=())
    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=256 + n,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        special_tokens=[],
    )
    hf.train_from_iterator([text], trainer=trainer)
    hf_merges = json.loads(hf.to_str())["model"]["merges"]
    assert [(str_to_token(a), str_to_token(b)) for a, b in hf_merges] == merges_as_bytes(tok)
    assert merges_as_bytes(tok) == merges[:n]


def test_training_twice_gives_identical_files(tmp_path):
    for name in ("a.json", "b.json"):
        tok = BPETokenizer()
        tok.train(SMALL_TEXT, vocab_size=350)
        tok.save(tmp_path / name)
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()


def test_training_stops_early_with_a_warning_when_pairs_run_out():
    tok = BPETokenizer()
    with pytest.warns(UserWarning, match=r"no pairs left to merge after 3 merges.*not 1000"):
        tok.train("abcd", vocab_size=1000)
    assert tok.vocab_size == 256 + 3 + 1


def test_training_rejects_empty_text():
    with pytest.raises(ValueError, match="cannot train on empty text"):
        BPETokenizer().train("", vocab_size=300)


def test_training_rejects_vocab_size_smaller_than_bytes_plus_special_tokens():
    with pytest.raises(ValueError, match=r"at least 257 \(256 bytes \+ 1 special token\), got 100"):
        BPETokenizer().train("some text", vocab_size=100)
    with pytest.raises(ValueError, match=r"at least 256 \(256 bytes \+ 0 special tokens\)"):
        BPETokenizer().train("some text", vocab_size=255, special_tokens=())


def test_decode_rejects_an_unknown_id_naming_it_and_the_vocab_size(small_tok):
    with pytest.raises(ValueError, match=r"token id 5000 is not in the vocabulary \(size 400\)"):
        small_tok.decode([1, 2, 5000])


def test_decode_accepts_a_torch_tensor_of_ids(small_tok):
    torch = pytest.importorskip("torch")
    ids = small_tok.encode("hello <|endoftext|>")
    assert small_tok.decode(torch.tensor(ids)) == small_tok.decode(ids)


# ---------------------------------------------------------------------------------------------
# tokenizer.json: save, load, and files from `tokenizers`.


def test_save_then_load_gives_the_same_tokenizer(small_tok, tmp_path):
    small_tok.save(tmp_path / "tokenizer.json")
    loaded = BPETokenizer.load(tmp_path / "tokenizer.json")
    assert loaded.vocab == small_tok.vocab
    assert loaded.merges == small_tok.merges
    assert loaded.special_tokens == small_tok.special_tokens
    assert loaded.encode(SMALL_TEXT) == small_tok.encode(SMALL_TEXT)


@pytest.mark.parametrize("alphabet", ["all 256 bytes", "only bytes seen"])
def test_load_of_a_file_trained_by_hf_encodes_like_hf_tokenizers(alphabet, tmp_path):
    # The `tokenizers` trainer puts special tokens first and sorts its alphabet by character,
    # so its ids differ from ours; trained on "only bytes seen", a byte it never saw is dropped.
    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    initial = pre_tokenizers.ByteLevel.alphabet() if alphabet == "all 256 bytes" else []
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        initial_alphabet=initial,
        show_progress=False,
        special_tokens=["<|endoftext|>"],
    )
    hf.train_from_iterator([SMALL_TEXT], trainer=trainer)
    hf.save(str(tmp_path / "hf.json"))

    tok = BPETokenizer.load(tmp_path / "hf.json")
    assert tok.special_tokens == {"<|endoftext|>": 0}
    for text in [SMALL_TEXT, *EDGE_STRINGS, "Zebra ♞ quixotic"]:
        ids = tok.encode(text)
        assert ids == hf.encode(text).ids
        assert tok.decode(ids) == hf_decode(hf, ids)


def test_load_accepts_merges_written_as_space_separated_strings(small_tok, tmp_path):
    cfg = small_tok.to_json()
    cfg["model"]["merges"] = [" ".join(m) for m in cfg["model"]["merges"]]  # older files
    (tmp_path / "t.json").write_text(json.dumps(cfg))
    assert BPETokenizer.load(tmp_path / "t.json").merges == small_tok.merges


def test_load_rejects_malformed_json_naming_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"model": ')
    with pytest.raises(ValueError, match=r"broken\.json: not a valid tokenizer\.json"):
        BPETokenizer.load(path)


def test_load_rejects_a_model_that_is_not_bpe(tmp_path):
    hf = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    hf.save(str(tmp_path / "wordpiece.json"))
    with pytest.raises(ValueError, match=r"wordpiece\.json: model type is 'WordPiece'.*'BPE'"):
        BPETokenizer.load(tmp_path / "wordpiece.json")


def test_load_rejects_a_pre_tokenizer_that_is_not_byte_level(small_tok, tmp_path):
    cfg = small_tok.to_json()
    cfg["pre_tokenizer"] = {"type": "Whitespace"}
    (tmp_path / "ws.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"ws\.json: pre_tokenizer .*Whitespace.*ByteLevel"):
        BPETokenizer.load(tmp_path / "ws.json")
