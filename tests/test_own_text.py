"""course_lib.own_text: a learner's text as people have it (a file, a folder, several files,
a byte-order mark, Windows line ends, another encoding), split fairly, and a run sized to it.

Real files in a temporary folder; nothing of the code under test is mocked.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from pathlib import Path

import pytest

from course_lib import data
from course_lib.config import GPTConfig
from course_lib.own_text import (
    TOKEN_BUDGET,
    Plan,
    load_text,
    plan_for,
    read_text,
    shape,
    split_document,
)

NOTEBOOK_09 = Path(__file__).parent.parent / "notebooks" / "09_your_own_text.ipynb"

# --- a learner's own text ----------------------------------------------------------------------


def test_own_text_file_splits_at_a_line_break(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("".join(f"line {i} é\n" for i in range(100)), encoding="utf-8")
    s = data.load_splits(path)
    train, val = s.text("train"), s.text("val")
    assert train + val == path.read_text(encoding="utf-8")
    assert train.endswith("\n") and 0.08 < len(val) / (len(train) + len(val)) < 0.12
    assert s.finetune == {}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b"  \n\n ", "is empty"),
        (
            b"caf\xe9 latin-1",
            "not UTF-8 text \\(byte 0xe9 at byte offset 3\\)\\. Convert it.*iconv -f latin1",
        ),
        (  # Windows' curly quotes: cp1252, which latin1 would turn into control characters
            "\u201cFair\u201d is foul".encode("cp1252"),
            "byte 0x93 at byte offset 0\\)\\. Bytes 0x80 to 0x9f .*iconv -f cp1252 -t utf-8",
        ),
    ],
)
def test_own_text_file_errors_name_the_problem(tmp_path, content, message):
    path = tmp_path / "mine.txt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        data.load_splits(path)


def test_a_byte_order_mark_and_windows_line_ends_are_normalised_and_said(tmp_path, capsys):
    text = "Shall I compare thee\nto a summer's day?\n" * 50
    windows = tmp_path / "windows.txt"
    windows.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode("utf-8"))
    unix = tmp_path / "unix.txt"
    unix.write_text(text, encoding="utf-8")
    assert read_text(windows) == text
    said = capsys.readouterr().err
    assert "dropped the byte-order mark" in said and "Windows line ends" in said
    assert data.load_splits(windows).text("val") == data.load_splits(unix).text("val")
    capsys.readouterr()
    read_text(unix)
    assert capsys.readouterr().err == ""  # nothing to say about a plain UTF-8 file


def test_missing_own_text_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.txt does not exist"):
        data.load_splits(tmp_path / "nope.txt")


# --- a folder, several files ---------------------------------------------------------------------


def write_shelf(folder, n: int) -> list[str]:
    """n documents of different lengths, each its own file."""
    folder.mkdir()
    texts = []
    for i in range(n):
        text = "".join(f"book {i}, line {j}: {'word ' * (j % 5)}\n" for j in range(20 + 7 * i))
        (folder / f"book{i:02d}.txt").write_text(text, encoding="utf-8")
        texts.append(text)
    (folder / ".DS_Store").write_bytes(b"\x00\x87binary")  # hidden: skipped
    return texts


def test_a_few_documents_each_give_their_last_part_to_validation(tmp_path):
    texts = write_shelf(tmp_path / "shelf", 3)
    splits = load_text(tmp_path / "shelf")
    assert list(splits.train) == list(splits.val) == ["book00", "book01", "book02"]
    for text, train, val in zip(texts, splits.train.values(), splits.val.values()):
        assert (train.text, val.text) == split_document(text, 0.1)
        assert train.text + val.text == text and train.text.endswith("\n")
    # <|endoftext|> after every document, in both splits.
    tok = data.course_tokenizer()
    ids = data.encode_splits(splits, tok)
    eot = tok.special_tokens[data.EOT]
    assert (ids["train"] == eot).sum() == (ids["val"] == eot).sum() == 3


def test_many_documents_give_whole_ones_to_validation(tmp_path):
    texts = write_shelf(tmp_path / "shelf", 25)
    splits = load_text(tmp_path / "shelf")
    # Every 10th, in name order: validation from across the shelf, never half a document.
    assert list(splits.val) == ["book09", "book19"]
    assert len(splits.train) == 23 and set(splits.train).isdisjoint(splits.val)
    assert splits.val["book19"].text == texts[19]
    # A list of files is the same as the folder that holds them.
    files = sorted((tmp_path / "shelf").glob("*.txt"))
    assert load_text(files) == splits


def test_documents_of_the_same_name_in_subfolders_keep_apart(tmp_path):
    for sub in ("a", "b"):
        (tmp_path / "texts" / sub).mkdir(parents=True)
        (tmp_path / "texts" / sub / "notes.txt").write_text(f"{sub} line\n" * 40)
    splits = load_text(tmp_path / "texts")
    assert len(splits.train) == 2 and all(name.endswith("notes") for name in splits.train)


def test_an_empty_folder_and_a_bad_file_in_a_folder_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty holds no files: put your text files"):
        load_text(tmp_path / "empty")
    write_shelf(tmp_path / "shelf", 3)
    (tmp_path / "shelf" / "old.txt").write_bytes("\u201cquoted\u201d".encode("cp1252"))
    with pytest.raises(ValueError, match=r"old\.txt is not UTF-8 text .* from cp1252"):
        load_text(tmp_path / "shelf")


# --- a run sized to the text ---------------------------------------------------------------------


def test_the_plan_grows_with_the_text_and_says_why():
    small, middle, big = plan_for(500_000), plan_for(1_500_000), plan_for(5_000_000)
    assert [p.vocab_size for p in (small, middle, big)] == [1024, 1024, 2048]
    assert [p.depth for p in (small, middle, big)] == [2, 3, 3]
    assert small.passes == 30 and 20 < middle.passes < 30 and 1 <= big.passes < 10
    assert small.reason.startswith("500,000 bytes of training text: vocabulary 1024, 2 layers x 96")
    assert "10.8 million tokens" in big.reason and "lowest validation loss is kept" in big.reason
    # Bytes, not characters: 100,000 Chinese characters are 300,000 bytes.
    assert plan_for("\u6625" * 100_000).n_bytes == 300_000
    assert small.steps(20_000, 64) == 30 * 20_000 // (16 * 64) + 1
    # plan_for estimates the tokens from the bytes; steps() counts them: the cap holds exactly
    # (to a batch), a text longer than the cap is read once, and no cap reads all the passes.
    window = big.batch_size * 128
    assert TOKEN_BUDGET <= big.steps(3_000_000, 128) * window < TOKEN_BUDGET + window
    assert big.steps(20_000_000, 128) == math.ceil(20_000_000 / window)
    uncapped = replace(big, max_tokens=None).steps(3_000_000, 128)
    assert uncapped == math.ceil(big.passes * 3_000_000 / window)


def test_depth_is_one_knob_and_depth_3_is_the_course_shape():
    assert shape(3, data.VOCAB_SIZE) == GPTConfig.course()
    two = shape(2, 1024)
    assert (two.n_layer, two.n_embd, two.n_head, two.block_size) == (2, 96, 3, 64)
    assert shape(2, 1024, n_embd=64).n_embd == 64
    with pytest.raises(ValueError, match=r"depth=0, expected a positive integer"):
        shape(0, 1024)
    assert isinstance(plan_for(1000), Plan)


# --- the command line: `course-lib train --text`, `course-lib eval --text` ------------------------

# The Latin letters as Cyrillic ones: a text in another script (2 bytes a letter in UTF-8) with
# the statistics of real language.
CYRILLIC = str.maketrans(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "абцдефгхийклмнопярстужвьызАБЦДЕФГХИЙКЛМНОПЯРСТУЖВЬЫЗ",
)
TINY_SHAPE = ["--n-layer", "1", "--n-embd", "32", "--block-size", "16", "--batch-size", "8",
              "--eval-steps", "2"]  # fmt: skip


def cyrillic(splits, n_chars: int) -> str:
    text = "\n".join(w.text for w in splits.train.values())
    return text[:n_chars].translate(CYRILLIC)


@pytest.fixture(scope="module")
def overfit_run(splits, tmp_path_factory):
    """A short run on 6,000 characters of Cyrillic, evaluated 15 times."""
    folder = tmp_path_factory.mktemp("overfit")
    text = folder / "story.txt"
    text.write_text(cyrillic(splits, 6_000), encoding="utf-8")
    out = folder / "run"
    args = ["train", "--text", str(text), *TINY_SHAPE, "--vocab-size", "300", "--max-steps",
            "150", "--eval-interval", "10", "--lr", "1e-2", "--out", str(out)]  # fmt: skip
    return text, out, args


def test_cli_keeps_the_best_evaluated_model_and_reports_it(overfit_run, capsys):
    from course_lib import cli
    from course_lib.checkpoint import load_checkpoint

    _, out, args = overfit_run
    assert cli.main(args) == 0
    said = capsys.readouterr().out
    log = [json.loads(line) for line in out.with_name("run.metrics.jsonl").read_text().split("\n")
           if line]  # fmt: skip
    evals = [e for e in log if "val_loss" in e]
    lowest = min(evals, key=lambda e: e["val_loss"])
    kept = load_checkpoint(out)
    assert (kept.which, kept.train_state.step) == ("best", lowest["step"])
    assert f"kept: the best checkpoint, step {lowest['step']} (val loss" in said
    assert ("the validation loss rose after it" in said) == (lowest["step"] < 150)
    bits = dict(re.findall(r"(this model|unigram model|uniform guess): (\d\.\d+) bits/char", said))
    assert float(bits["this model"]) < float(bits["unigram model"]) < float(bits["uniform guess"])
    assert "a sample, from the first line of the held-out text:" in said


def test_cli_eval_scores_the_held_out_part_unless_told(overfit_run, capsys):
    from course_lib import cli
    from course_lib.checkpoint import load_checkpoint
    from course_lib.metrics import bits_per_char, evaluate_all

    text, out, args = overfit_run
    if not (out / "best").is_dir():
        assert cli.main(args) == 0
    capsys.readouterr()
    assert cli.main(["eval", "--checkpoint", str(out), "--text", str(text)]) == 0
    said = capsys.readouterr()
    assert "its held-out part, 1 of 1 documents (the last 10% of each)" in said.out
    held_out = float(re.search(r"(\d\.\d+) bits/char", said.out).group(1))
    ckpt = load_checkpoint(out)
    splits = data.load_splits(text_file=text)
    val = data.encode_splits(splits, ckpt.tokenizer)["val"]
    loss = evaluate_all(ckpt.model, val, ckpt.config.block_size)
    chars = sum(len(w.text) for w in splits.val.values())
    assert held_out == pytest.approx(bits_per_char(loss, len(val), chars), abs=6e-4)

    assert cli.main(["eval", "--checkpoint", str(out), "--text", str(text), "--whole"]) == 0
    said = capsys.readouterr()
    assert "the training part included: if this model trained on it, the number flatters" in (
        said.err
    )
    assert float(re.search(r"(\d\.\d+) bits/char", said.out).group(1)) < held_out


def test_cli_sizes_the_run_to_the_text(splits, tmp_path, capsys):
    from course_lib import cli
    from course_lib.checkpoint import read_config

    runs = {}
    for n_chars in (20_000, 60_000, 700_000):  # Cyrillic: about 1.9 bytes a character
        text = tmp_path / f"text{n_chars}.txt"
        text.write_text(cyrillic(splits, n_chars), encoding="utf-8")
        out = tmp_path / f"run{n_chars}"
        assert cli.main(["train", "--text", str(text), "--max-minutes", "0", "--out",
                         str(out)]) == 0  # fmt: skip
        said = capsys.readouterr().out
        plan = plan_for(data.load_splits(text_file=text))
        assert said.startswith(plan.reason)
        model, train = read_config(out)
        steps, batch, block = train["max_steps"], train["batch_size"], model.block_size
        passes = re.search(rf"{steps:,} steps of {batch} x {block} tokens, ([\d.]+) passes", said)
        assert plan.passes <= float(passes.group(1)) < plan.passes + 0.5  # whole steps
        runs[n_chars] = (model.vocab_size, model.n_layer, model.n_embd, train["max_steps"])
        assert train["keep_best"] and train["batch_size"] == plan.batch_size
    assert runs[20_000][:3] == runs[60_000][:3] == (1024, 2, 96)
    assert runs[700_000][:3] == (1024, 3, 128)
    assert runs[20_000][3] < runs[60_000][3]  # more text, more steps for the same passes


def test_cli_trains_on_a_folder_of_documents(splits, tmp_path, capsys):
    from course_lib import cli
    from course_lib.checkpoint import load_checkpoint

    shelf = tmp_path / "shelf"
    shelf.mkdir()
    for i, name in enumerate(("macbeth", "tempest", "henry_v")):
        (shelf / f"{name}.txt").write_text(splits.val[name].text[:8_000].translate(
            CYRILLIC if i else {}), encoding="utf-8")  # fmt: skip
    out = tmp_path / "run"
    assert cli.main(["train", "--text", str(shelf), *TINY_SHAPE, "--vocab-size", "300",
                     "--max-steps", "4", "--out", str(out)]) == 0  # fmt: skip
    assert "held-out text, every token" in capsys.readouterr().out
    assert load_checkpoint(out).tokenizer.vocab_size == 300
    assert cli.main(["eval", "--checkpoint", str(out), "--text", str(shelf)]) == 0
    assert "its held-out part, 3 of 3 documents" in capsys.readouterr().out


# --- Lesson 09 on a text that is not the poems ----------------------------------------------------


def cjk_words(splits, n_words: int) -> str:
    """The plays with each word written as one CJK ideograph (3 bytes in UTF-8, no spaces, a
    line a line): a text in another script, of another size, with the statistics of a language."""
    words: dict[str, str] = {}
    lines = []
    for line in splits.text("train").splitlines():
        tokens = re.findall(r"[A-Za-z']+", line.lower())
        lines.append("".join(words.setdefault(w, chr(0x4E00 + len(words))) for w in tokens))
        n_words -= len(tokens)
        if n_words <= 0:
            break
    return "\n".join(lines) + "\n"


@pytest.mark.slow
def test_lesson_09_runs_end_to_end_on_another_text(splits, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    text = tmp_path / "poems_in_another_script.txt"
    text.write_text(cjk_words(splits, 25_000), encoding="utf-8")
    notebook = nbformat.read(NOTEBOOK_09, as_version=4)
    settings = [c for c in notebook.cells if "\ntext_file = stand_in" in "\n" + c.source]
    assert len(settings) == 1, "Lesson 09 has one line `text_file = stand_in`, the one to change"
    settings[0].source = re.sub(r"(?m)^text_file = stand_in.*$", f"text_file = {str(text)!r}",
                                settings[0].source)  # fmt: skip
    # Its own checkpoint folder, so the lesson's stored run is left alone; half a minute a run.
    settings[0].source = (
        settings[0]
        .source.replace(
            'folder = checkpoint_dir() / "lesson09"', f"folder = Path({str(tmp_path / 'run')!r})"
        )
        .replace("max_minutes = 4 ", "max_minutes = 0.5 ")
    )
    assert "max_minutes = 0.5 " in settings[0].source
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK_09.parent)}}).execute()  # fmt: skip
    said = "".join(o.get("text", "") for o in settings[0].outputs)
    plan = plan_for(load_text(text))
    assert said.strip() == plan.reason and plan.n_bytes < 150_000  # not the poems' plan
    assert (tmp_path / "run" / "best").is_dir()
