"""`course-lib compress`: every method writes a checkpoint that `course-lib eval` and `course-lib
sample` read and `course-lib compress` can compress again; bad input names the fix."""

from __future__ import annotations

import re

import pytest
import torch

from course_lib import cli
from course_lib.checkpoint import load_checkpoint
from course_lib.compress import sparsity


@pytest.fixture
def base(cli_base):
    """conftest's tiny checkpoint (2 layers of 2 heads, 32 wide) and its text, macbeth.txt."""
    return cli_base


def compress(root, out: str, *how: str, checkpoint: str = "base") -> list[str]:
    text = str(root / "macbeth.txt")
    return ["compress", "--checkpoint", str(root / checkpoint), "--text", text,
            "--batch-size", "4", "--out", str(root / out), *how]  # fmt: skip


def readable(root, name: str, capsys) -> None:
    """`course-lib eval` and `course-lib sample` read the checkpoint."""
    capsys.readouterr()
    path = str(root / name)
    assert cli.main(["eval", "--checkpoint", path, "--text", str(root / "macbeth.txt")]) == 0
    assert re.search(r"\d\.\d{4} nats/token, \d\.\d{3} bits/char", capsys.readouterr().out)
    assert cli.main(["sample", "--checkpoint", path, "--max-new-tokens", "5"]) == 0


@pytest.mark.parametrize(("name", "how", "ratio"), [
    ("int8", ["--int8"], r"0\.[23]\d\dx"),
    ("int4", ["--int4", "16"], r"0\.[12]\d\dx"),
    ("bf16", ["--bf16"], r"0\.500x"),
])  # fmt: skip
def test_quantizing_writes_a_smaller_checkpoint_that_eval_and_sample_read(
    base, capsys, name, how, ratio
):
    assert cli.main(compress(base, name, *how)) == 0
    out = capsys.readouterr().out
    assert re.search(rf"bytes of weights \({ratio}\)", out), out
    assert f"checkpoint: {base / name}" in out
    readable(base, name, capsys)


def test_magnitude_pruning_with_recovery_keeps_its_zeros(base, capsys):
    assert cli.main(compress(base, "sparse", "--prune-magnitude", "0.5", "--scope", "global",
                             "--recover-steps", "4")) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "recovery: 4 steps" in out and "50.0% of the blocks' weights are zero" in out
    model = load_checkpoint(base / "sparse").model
    assert sparsity(model) == pytest.approx(0.5, abs=1e-3)  # the fine-tune kept them at zero
    readable(base, "sparse", capsys)


def test_structured_pruning_removes_heads_and_neurons_for_real(base, capsys):
    assert cli.main(compress(base, "heads", "--prune-heads", "1", "--recover-steps", "2")) == 0
    heads = [b.attn.n_head for b in load_checkpoint(base / "heads").model.transformer.h]
    assert sorted(heads) == [1, 2]
    readable(base, "heads", capsys)
    assert cli.main(compress(base, "neurons", "--prune-neurons", "16")) == 0
    widths = [
        b.mlp.c_fc.out_features for b in load_checkpoint(base / "neurons").model.transformer.h
    ]
    assert sum(widths) == 2 * 128 - 16
    readable(base, "neurons", capsys)


def test_a_distilled_student_has_the_teachers_vocabulary_and_compresses_again(base, capsys):
    assert cli.main(compress(base, "student", "--distill", "n_layer=1,n_embd=16", "--steps",
                             "4")) == 0  # fmt: skip
    assert "distilled: 4 steps" in capsys.readouterr().out
    student, teacher = load_checkpoint(base / "student"), load_checkpoint(base / "base")
    assert (student.config.n_layer, student.config.n_embd) == (1, 16)
    assert student.config.vocab_size == teacher.config.vocab_size
    assert student.tokenizer.vocab_size == teacher.tokenizer.vocab_size
    readable(base, "student", capsys)
    assert cli.main(compress(base, "student-int8", "--int8", checkpoint="student")) == 0
    model = load_checkpoint(base / "student-int8").model
    assert model.transformer.h[0].mlp.c_fc.weight_int8.dtype == torch.int8
    readable(base, "student-int8", capsys)


@pytest.mark.parametrize(("how", "error", "status"), [
    (["--prune-magnitude", "1.0"], r"amount=1\.0", 1),
    (["--int4", "5"], "group_size=5", 1),
    (["--prune-heads", "3"], "count", 1),
    (["--int8", "--recover-steps", "3"], "--recover-steps follows pruning", 2),  # bad usage
    (["--distill", "n_layers=2"], "'n_layers=2' is not field=value", 2),
    (["--distill", "n_layer=two"], "n_layer='two' is not a int", 2),
])  # fmt: skip
def test_bad_input_exits_naming_the_fix(base, capsys, how, error, status):
    assert cli.main(compress(base, "refused", *how)) == status
    err = capsys.readouterr().err
    assert err.startswith("course-lib compress: error:") and re.search(error, err), err


def test_quantizing_a_quantized_checkpoint_is_refused(base, capsys):
    assert cli.main(compress(base, "int8-again", "--int8")) == 0
    assert cli.main(compress(base, "twice", "--int8", checkpoint="int8-again")) == 1
    assert "already quantized" in capsys.readouterr().err
