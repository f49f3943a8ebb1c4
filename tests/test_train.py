"""course_lib.train: the schedule, the optimizer groups, evaluation, the loop, exact resume (also
after SIGKILL), and DDP under torchrun training the same model as one process.

Models are tiny (2 layers, 32 wide, 16-token context) and runs a few dozen steps, on real
tokens: the corpus's course-tokenizer ids, or a tokenizer trained on part of Macbeth for the
command-line runs. Subprocesses use one thread, so every run of the same command computes the
same sums in the same order (bit-identical floats on a CPU).
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from course_lib import cli, course_model, data, metrics
from course_lib.checkpoint import (
    CheckpointError,
    checkpoint_exists,
    load_checkpoint,
    load_model,
    load_train_state,
)
from course_lib.config import COURSE_STEPS, TrainConfig
from course_lib.metrics import bits_per_char, evaluate_all
from course_lib.model import GPT, GPTConfig
from course_lib.optim import configure_optimizer, lr_at
from course_lib.train import evaluate, train

TINY = dict(vocab_size=data.VOCAB_SIZE, block_size=16, n_layer=2, n_head=2, n_embd=32)
TORCHRUN = Path(sys.executable).with_name("torchrun")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread: the same sums in the same order
TINY_CLI = [
    "--vocab-size", "300", "--n-layer", "2", "--n-head", "2", "--n-embd", "32",
    "--block-size", "16", "--batch-size", "8", "--eval-steps", "2",
]  # fmt: skip


def tiny_model(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**TINY, **overrides}))


def tiny_config(**overrides) -> TrainConfig:
    defaults = dict(
        batch_size=4,
        max_steps=12,
        warmup_steps=2,
        eval_interval=4,
        eval_steps=2,
        checkpoint_interval=4,
        progress=False,
    )
    return TrainConfig(**{**defaults, **overrides})


@pytest.fixture(scope="module")
def tokens() -> dict[str, torch.Tensor]:
    return {"train": data.load_tokens("train")[:50_000], "val": data.load_tokens("val")[:10_000]}


@pytest.fixture(scope="module")
def text_file(splits, tmp_path_factory) -> Path:
    """30,000 characters of Macbeth, a learner's own text for `course-lib train --text`."""
    path = tmp_path_factory.mktemp("text") / "macbeth.txt"
    path.write_text(splits.val["macbeth"].text[:30_000], encoding="utf-8")
    return path


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), f"{name} differs"


# --- the learning-rate schedule ------------------------------------------------------------------


def test_lr_schedule_warmup_then_cosine_to_min():
    max_lr, min_lr, warmup, steps = 1e-3, 1e-4, 10, 100
    lrs = [lr_at(s, max_lr, min_lr, warmup, steps) for s in range(steps + 20)]
    assert lrs[0] == max_lr / warmup  # step 0 already moves: max_lr * 1 / warmup
    assert lrs[warmup - 1] == max_lr == lrs[warmup]  # the peak, where the cosine starts
    assert all(a < b for a, b in zip(lrs[:warmup], lrs[1:warmup]))
    assert lrs[1] - lrs[0] == pytest.approx(lrs[5] - lrs[4])  # a straight line
    assert all(a > b for a, b in zip(lrs[warmup:steps], lrs[warmup + 1 : steps + 1]))
    assert lrs[(warmup + steps) // 2] == pytest.approx((max_lr + min_lr) / 2)  # half the cosine
    assert lrs[steps:] == [min_lr] * 20  # flat after the schedule


def test_lr_schedule_without_warmup_starts_at_max():
    assert lr_at(0, 1e-3, 1e-4, 0, 100) == 1e-3


def test_lr_schedule_rejects_warmup_longer_than_training():
    with pytest.raises(ValueError, match="warmup_steps=200 must be between 0 and max_steps=100"):
        lr_at(0, 1e-3, 1e-4, 200, 100)
    with pytest.raises(ValueError, match=r"warmup_steps=200 .* e\.g\. 5"):
        TrainConfig(max_steps=100, warmup_steps=200)


def test_train_config_rejects_min_lr_above_lr():
    with pytest.raises(ValueError, match=r"min_lr=0\.01 must be between 0 and lr=0\.001"):
        TrainConfig(lr=1e-3, min_lr=1e-2)


# --- optimizer, evaluation, units ----------------------------------------------------------------


def test_weight_decay_only_on_matrices():
    model = tiny_model()
    decay, no_decay = configure_optimizer(model, TrainConfig(weight_decay=0.1)).param_groups
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)
    name = {id(p): n for n, p in model.named_parameters()}
    decayed = {name[id(p)] for p in decay["params"]}
    assert all(p.dim() >= 2 for p in decay["params"])
    assert all(p.dim() == 1 for p in no_decay["params"])
    assert decayed >= {"transformer.wte.weight", "transformer.wpe.weight"}
    assert "transformer.h.0.attn.c_attn.weight" in decayed
    assert not decayed & {"transformer.h.0.attn.c_attn.bias", "transformer.h.0.ln_1.weight"}
    everything = decay["params"] + no_decay["params"]
    assert len({id(p) for p in everything}) == len(everything)  # the tied wte/lm_head once
    assert sum(p.numel() for p in everything) == model.num_params()


def test_evaluate_is_the_mean_loss_of_eval_batches_without_dropout(tokens):
    model = tiny_model(dropout=0.5).train()
    config = tiny_config(eval_steps=3)
    got = evaluate(model, tokens["val"], config, torch.Generator().manual_seed(1))
    assert model.training  # put back in the mode it was in
    assert all(p.grad is None for p in model.parameters())  # no_grad: nothing accumulated
    model.eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        losses = [model(*data.get_batch(tokens["val"], 4, 16, g)).loss for _ in range(3)]
    assert got == pytest.approx(torch.stack(losses).mean().item(), abs=1e-6)


def test_bits_per_char_converts_nats_per_token():
    assert bits_per_char(math.log(2), n_tokens=10, n_chars=10) == pytest.approx(1.0)
    # 4 characters per token: a token's 4 bits are 1 bit per character
    assert bits_per_char(4 * math.log(2), n_tokens=100, n_chars=400) == pytest.approx(1.0)


# --- the loop ------------------------------------------------------------------------------------


def test_training_lowers_the_loss_and_logs_every_step(tokens, tmp_path):
    log = tmp_path / "metrics.jsonl"
    config = tiny_config(max_steps=30, lr=3e-3, min_lr=3e-4, eval_interval=10, log_path=log)
    result = train(tiny_model(), tokens, config)
    entries = read_log(log)
    assert entries == result.history
    assert [e["step"] for e in entries] == list(range(31))  # 30 updates, then the final eval
    evaluated = [e["step"] for e in entries if "val_loss" in e]
    assert evaluated == [0, 10, 20, 30]
    for e in entries[:-1]:
        assert e["lr"] == lr_at(e["step"], 3e-3, 3e-4, 2, 30)
        assert e["tokens"] == (e["step"] + 1) * 4 * 16
    # Untrained: about ln(2048) = 7.6 nats. 30 steps of 64 tokens learn the commonest tokens
    # (measured over 3 seeds: val 7.60-7.62 -> 6.81-6.83).
    assert entries[0]["val_loss"] == pytest.approx(math.log(data.VOCAB_SIZE), abs=0.2)
    assert result.val_loss < entries[0]["val_loss"] - 0.5
    assert (result.step, result.stopped) == (30, "max_steps")


def test_resume_gives_bit_identical_weights(tokens, tmp_path):
    # Dropout > 0, so the dropout masks (torch's global generator) must come back too.
    config = tiny_config(max_steps=12, checkpoint_dir=tmp_path / "straight")
    straight = tiny_model(dropout=0.1)
    whole = train(straight, tokens, config)

    config = replace(config, checkpoint_dir=tmp_path / "resumed", stop_at_step=6)
    first = train(tiny_model(dropout=0.1), tokens, config)
    assert (first.step, first.stopped) == (6, "stop_at_step")
    assert load_train_state(tmp_path / "resumed").step == 6
    # Other initial weights: whatever matches must come from the checkpoint.
    resumed = tiny_model(seed=123, dropout=0.1)
    rest = train(resumed, tokens, replace(config, stop_at_step=None), resume=True)

    assert rest.step == 12
    assert [e.get("loss") for e in rest.history] == [e.get("loss") for e in whole.history[6:]]
    assert_same_weights(straight, resumed)


def test_custom_loss_and_batches_resume_bit_for_bit(tokens, tmp_path):
    def weighted(net, batch):  # later positions count more
        x, y, w = batch
        losses = torch.nn.functional.cross_entropy(
            net(x).logits.flatten(0, 1), y.flatten(), reduction="none"
        )
        return (losses * w.flatten()).sum() / w.sum()

    def source(split):
        def batches(batch_size, generator):
            x, y = data.get_batch(tokens[split], batch_size, 16, generator)
            return x, y, torch.linspace(0.5, 1.5, 16).expand(batch_size, 16)

        return batches

    sources = {s: source(s) for s in ("train", "val")}
    config = tiny_config(max_steps=12, checkpoint_dir=tmp_path / "straight")
    straight = tiny_model(dropout=0.1)
    whole = train(straight, sources, config, loss_fn=weighted)
    assert whole.val_loss < whole.history[0]["val_loss"]
    config = replace(config, checkpoint_dir=tmp_path / "resumed", stop_at_step=5)
    train(tiny_model(dropout=0.1), sources, config, loss_fn=weighted)
    resumed = tiny_model(seed=4, dropout=0.1)
    rest = train(resumed, sources, replace(config, stop_at_step=None), resume=True,
                 loss_fn=weighted)  # fmt: skip
    assert [e.get("loss") for e in rest.history] == [e.get("loss") for e in whole.history[5:]]
    assert_same_weights(straight, resumed)


def test_data_that_is_neither_tokens_nor_a_batch_source_is_refused(tokens):
    with pytest.raises(ValueError, match=r"each a \(N,\) tensor of token ids or a batch source"):
        train(tiny_model(), {"train": tokens["train"], "val": [1, 2, 3]}, tiny_config())


def test_resume_keeps_the_tokenizer_in_the_checkpoint(tokens, tmp_path):
    config = tiny_config(max_steps=4, checkpoint_dir=tmp_path / "ckpt")
    train(tiny_model(), tokens, config, tokenizer=data.course_tokenizer())
    train(tiny_model(), tokens, replace(config, max_steps=8), resume=True)  # no tokenizer given
    ckpt = load_checkpoint(tmp_path / "ckpt")
    assert ckpt.train_state.step == 8
    assert ckpt.tokenizer.vocab_size == data.VOCAB_SIZE


def test_resume_refuses_a_checkpoint_of_another_model(tokens, tmp_path):
    config = tiny_config(max_steps=4, checkpoint_dir=tmp_path / "ckpt")
    train(tiny_model(), tokens, config)
    with pytest.raises(CheckpointError, match=r"n_embd=32 \(this model: 64\)"):
        train(tiny_model(n_embd=64), tokens, replace(config, max_steps=8), resume=True)


def test_nan_loss_stops_naming_the_step(tokens, tmp_path):
    model = tiny_model()
    forwards = 0

    def poison(module, inputs, output):  # the 6th training forward (step 5) returns nan
        nonlocal forwards
        forwards += module.training
        return output * math.nan if forwards == 6 and module.training else output

    model.lm_head.register_forward_hook(poison)
    config = tiny_config(max_steps=10, checkpoint_interval=2, checkpoint_dir=tmp_path / "ckpt")
    with pytest.raises(FloatingPointError, match=r"loss became nan at step 5: lower lr \(now "):
        train(model, tokens, config)
    last_good = load_checkpoint(tmp_path / "ckpt")  # saved at step 4, before the nan
    assert last_good.train_state.step == 4
    assert all(torch.isfinite(p).all() for p in last_good.model.parameters())


def test_max_minutes_stops_with_a_checkpoint_to_resume_from(tokens, tmp_path):
    config = tiny_config(max_steps=10_000, max_minutes=0.002, checkpoint_dir=tmp_path / "ckpt")
    result = train(tiny_model(), tokens, config)
    assert result.stopped == "max_minutes"
    assert 0 < result.step < 10_000
    assert load_train_state(tmp_path / "ckpt").step == result.step


# --- keep the best, stop when it stops improving -------------------------------------------------


@pytest.fixture(scope="module")
def overfit_tokens(tokens) -> dict[str, torch.Tensor]:
    """400 training tokens at lr 1e-2: the validation loss is lowest at step 8 and rises after
    (measured: 7.62, 7.29, 7.12, then 7.66 to 8.30), a run that overfits within seconds."""
    return {"train": tokens["train"][:400], "val": tokens["val"]}


def overfit_config(folder: Path, **overrides) -> TrainConfig:
    settings = dict(max_steps=40, lr=1e-2, min_lr=1e-3, checkpoint_interval=8)
    return tiny_config(**{**settings, **overrides}, checkpoint_dir=folder)


def test_keep_best_keeps_the_lowest_validation_loss_beside_the_last(
    overfit_tokens, tmp_path, capsys
):
    result = train(tiny_model(), overfit_tokens, overfit_config(tmp_path / "run", keep_best=True))
    evals = [e for e in result.history if "val_loss" in e]
    lowest = min(evals, key=lambda e: e["val_loss"])
    assert (result.best_step, result.best_val_loss) == (lowest["step"], lowest["val_loss"])
    assert 0 < result.best_step < result.step == 40 and evals[-1]["val_loss"] > lowest["val_loss"]

    capsys.readouterr()
    best = load_checkpoint(tmp_path / "run")  # the best, by default, and it says so
    said = capsys.readouterr().err
    assert f"loaded the best checkpoint, step {result.best_step}" in said
    assert "the last is step 40: which='last'" in said
    assert (best.which, best.train_state.step) == ("best", result.best_step)
    assert best.train_state.best_val_loss == result.best_val_loss
    last = load_checkpoint(tmp_path / "run", which="last")
    assert (last.which, last.train_state.step) == ("last", 40)
    assert_same_weights(load_model(tmp_path / "run", which="best"), best.model)

    # The best is the model at that step of the same run: the same schedule stopped there.
    stopped = tiny_model()
    train(stopped, overfit_tokens, overfit_config(tmp_path / "stopped",
                                                  stop_at_step=result.best_step))  # fmt: skip
    assert_same_weights(stopped, best.model)


def test_patience_stops_the_run_and_a_resume_goes_on_bit_for_bit(overfit_tokens, tmp_path):
    config = overfit_config(tmp_path / "whole", keep_best=True, patience=3)
    whole = train(tiny_model(dropout=0.1), overfit_tokens, config)
    # Three evaluations (every 4 steps) without a lower validation loss than the best's.
    assert whole.stopped == "patience" and whole.step == whole.best_step + 3 * 4 < 40
    assert load_train_state(tmp_path / "whole").step == whole.step

    cut = replace(config, checkpoint_dir=tmp_path / "cut", stop_at_step=whole.best_step + 4)
    assert train(tiny_model(dropout=0.1), overfit_tokens, cut).stopped == "stop_at_step"
    resumed = tiny_model(seed=5, dropout=0.1)
    rest = train(resumed, overfit_tokens, replace(cut, stop_at_step=None), resume=True)
    assert (rest.stopped, rest.step, rest.best_step) == ("patience", whole.step, whole.best_step)
    assert_same_weights(load_model(tmp_path / "whole", which="last"), resumed)
    assert_same_weights(load_model(tmp_path / "whole"), load_model(tmp_path / "cut"))
    # A finished run stays finished.
    again = train(tiny_model(dropout=0.1), overfit_tokens, replace(cut, stop_at_step=None),
                  resume=True)  # fmt: skip
    assert (again.stopped, again.step) == ("patience", whole.step)


def test_rising_validation_loss_is_said_once(overfit_tokens, tmp_path, capsys):
    config = overfit_config(tmp_path / "run", progress=True)
    train(tiny_model(), overfit_tokens, config)
    said = capsys.readouterr().out  # beside the progress bar's lines of each evaluation
    assert said.count("is above its best") == 1
    assert "the model has begun to overfit; keep_best=True would keep it" in said


def test_training_anew_into_a_folder_drops_the_best_of_the_run_before(overfit_tokens, tmp_path):
    train(tiny_model(), overfit_tokens, overfit_config(tmp_path / "run", keep_best=True))
    assert checkpoint_exists(tmp_path / "run" / "best")
    train(tiny_model(), overfit_tokens, overfit_config(tmp_path / "run", max_steps=4))
    assert not (tmp_path / "run" / "best").exists()
    assert load_checkpoint(tmp_path / "run").which == "last"
    with pytest.raises(CheckpointError, match=r"has no best/ checkpoint: its run did not keep"):
        load_checkpoint(tmp_path / "run", which="best")


def test_keep_best_and_patience_settings_are_checked(overfit_tokens):
    keep = TrainConfig(keep_best=True)  # the folder may come later (cached_train gives it)
    with pytest.raises(ValueError, match=r"keep_best=True keeps the best checkpoint in "):
        train(tiny_model(), overfit_tokens, keep)
    with pytest.raises(ValueError, match=r"patience=0, expected a positive integer"):
        TrainConfig(patience=0)
    with pytest.raises(ValueError, match=r"which must be 'best', 'last' or None"):
        load_checkpoint("anywhere", which="first")


# --- the command line: SIGKILL and resume, torchrun ----------------------------------------------


def cli_train(text_file: Path, out: Path, *options: str) -> list[str]:
    return [sys.executable, "-m", "course_lib", "train", "--text", str(text_file), *TINY_CLI,
            "--out", str(out), *options]  # fmt: skip


SIGKILL_OPTIONS = ["--max-steps", "150", "--eval-interval", "50", "--checkpoint-interval", "1",
                   "--dropout", "0.1"]  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted(text_file, tmp_path_factory) -> Path:
    """The run that the killed-and-resumed ones must reproduce."""
    out = tmp_path_factory.mktemp("ref") / "ref"
    subprocess.run(cli_train(text_file, out, *SIGKILL_OPTIONS), env=ENV, check=True,
                   capture_output=True)  # fmt: skip
    return out


@pytest.mark.slow
@pytest.mark.parametrize("kill_after", [1, 60, 140])
def test_sigkill_during_training_then_resume_gives_same_final_weights(
    text_file, uninterrupted, tmp_path, kill_after
):
    # Every step saves a checkpoint, so a kill lands while one is being written (the folder
    # swap, a file half flushed) as often as not. Chosen points, early, middle and late: the
    # kill comes once the metrics log shows step kill_after done, during the next steps.
    run = tmp_path / "run"
    log = tmp_path / "run.metrics.jsonl"
    proc = subprocess.Popen(cli_train(text_file, run, *SIGKILL_OPTIONS), env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if log.is_file() and log.read_text().count("\n") >= kill_after:
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "finished before the kill"
    # The last checkpoint, whatever the kill cut (none yet, if it came before the first save).
    killed_at = load_train_state(run).step if checkpoint_exists(run) else 0
    assert kill_after - 1 <= killed_at < 150

    resumed = subprocess.run(cli_train(text_file, run, *SIGKILL_OPTIONS, "--resume"), env=ENV,
                             capture_output=True, text=True)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert "step 150/150" in resumed.stdout
    # Both models of the run come back: the last and the best (kept: --text keeps it).
    assert_same_weights(load_model(uninterrupted, which="last"), load_model(run, which="last"))
    best = load_checkpoint(run, which="best")
    ref_best = load_checkpoint(uninterrupted, which="best")
    assert best.train_state.step == ref_best.train_state.step
    assert_same_weights(ref_best.model, best.model)
    # The metrics log was cut back to the checkpoint: each step once, as in one run.
    ref_log = read_log(uninterrupted.with_name("ref.metrics.jsonl"))
    assert [(e["step"], e.get("loss")) for e in read_log(log)] == [
        (e["step"], e.get("loss")) for e in ref_log
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "run.metrics.jsonl"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_ddp_follows_single_process_losses(text_file, tmp_path):
    # Dropout 0: the two processes draw their dropout masks from other random streams.
    options = ["--max-steps", "20", "--eval-interval", "10", "--checkpoint-interval", "20"]
    ddp = [str(TORCHRUN), "--nproc_per_node", "2", "--master_port", str(free_port()),
           *cli_train(text_file, tmp_path / "ddp", *options)[1:]]  # fmt: skip
    done = subprocess.run(ddp, env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    subprocess.run(cli_train(text_file, tmp_path / "one", *options), env=ENV, check=True,
                   capture_output=True)  # fmt: skip

    two, one = read_log(tmp_path / "ddp.metrics.jsonl"), read_log(tmp_path / "one.metrics.jsonl")
    assert [e["step"] for e in two] == [e["step"] for e in one] == list(range(21))
    # Each process averages over half the batch and DDP averages the two gradients: the same
    # mean, summed in another order. float32 rounding (measured 1e-6 on losses and weights).
    for a, b in zip(two, one):
        for key in ("loss", "train_loss", "val_loss"):
            assert (key in a) == (key in b)
            if key in a:
                assert a[key] == pytest.approx(b[key], abs=1e-5), (a["step"], key)
    for (name, a), b in zip(
        load_model(tmp_path / "ddp").state_dict().items(),
        load_model(tmp_path / "one").state_dict().values(),
    ):
        assert torch.allclose(a, b, atol=1e-5, rtol=0), name


CUSTOM_RUN = """
import sys

import torch
import torch.nn.functional as F

from course_lib import data
from course_lib.model import GPT, GPTConfig
from course_lib.config import TrainConfig
from course_lib.train import train


def smoothed_loss(net, batch):  # a loss of our own: label smoothing, weighted positions
    x, y, weight = batch
    logits = net(x).logits
    losses = F.cross_entropy(logits.flatten(0, 1), y.flatten(), label_smoothing=0.1,
                             reduction="none")
    return (losses * weight.flatten()).sum() / weight.sum()


def line_starts(tokens):  # batches of our own: windows that start after a newline
    starts = (tokens[:-17] == 10).nonzero().flatten() + 1

    def batches(batch_size, generator):
        pick = starts[torch.randint(len(starts), (batch_size,), generator=generator)]
        x = torch.stack([tokens[s : s + 16] for s in pick])
        y = torch.stack([tokens[s + 1 : s + 17] for s in pick])
        return x, y, torch.linspace(0.5, 1.5, 16).expand(batch_size, 16)

    return batches


torch.manual_seed(0)
model = GPT(GPTConfig(vocab_size=data.VOCAB_SIZE, block_size=16, n_layer=2, n_head=2, n_embd=32))
tokens = {s: data.load_tokens(s)[:50_000] for s in ("train", "val")}
config = TrainConfig(batch_size=8, max_steps=12, warmup_steps=2, eval_interval=6, eval_steps=2,
                     checkpoint_interval=12, progress=False, log_path=sys.argv[1],
                     checkpoint_dir=sys.argv[2])
train(model, {s: line_starts(t) for s, t in tokens.items()}, config, loss_fn=smoothed_loss)
"""


@pytest.mark.slow
def test_custom_loss_and_batches_under_ddp_follow_single_process_losses(tmp_path):
    script = tmp_path / "custom_run.py"
    script.write_text(CUSTOM_RUN)
    ddp = [str(TORCHRUN), "--nproc_per_node", "2", "--master_port", str(free_port()), str(script),
           str(tmp_path / "ddp.jsonl"), str(tmp_path / "ddp")]  # fmt: skip
    done = subprocess.run(ddp, env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    one = [sys.executable, str(script), str(tmp_path / "one.jsonl"), str(tmp_path / "one")]
    subprocess.run(one, env=ENV, check=True, capture_output=True)

    two, one = read_log(tmp_path / "ddp.jsonl"), read_log(tmp_path / "one.jsonl")
    assert [e["step"] for e in two] == [e["step"] for e in one] == list(range(13))
    assert one[-1]["val_loss"] < one[0]["val_loss"]  # it trained
    for a, b in zip(two, one):
        for key in ("loss", "train_loss", "val_loss"):
            assert (key in a) == (key in b)
            if key in a:
                assert a[key] == pytest.approx(b[key], abs=1e-5), (a["step"], key)
    run = load_checkpoint(tmp_path / "ddp").run
    assert run["loss"] == "__main__.smoothed_loss"
    assert run["batches"]["train"] == "__main__.line_starts.<locals>.batches"
    for (name, a), b in zip(
        load_model(tmp_path / "ddp").state_dict().items(),
        load_model(tmp_path / "one").state_dict().values(),
    ):
        assert torch.allclose(a, b, atol=1e-5, rtol=0), name


def test_cli_train_errors_print_cleanly(text_file, tmp_path, capsys):
    code = cli.main(["train", "--text", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "x")])
    assert code == 1
    assert "course-lib train: error: text file" in capsys.readouterr().err

    out = tmp_path / "run"
    args = ["train", "--text", str(text_file), *TINY_CLI, "--out", str(out), "--max-steps", "2"]
    assert cli.main(args) == 0
    assert load_checkpoint(out).tokenizer.vocab_size == 300
    code = cli.main([*args, "--resume", "--n-embd", "64"])
    assert code == 1
    assert "has n_embd=32, not n_embd=64: to resume, leave out" in capsys.readouterr().err


def test_evaluate_all_is_the_mean_loss_over_consecutive_windows():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=8, n_layer=1, n_head=2, n_embd=16))
    tokens = torch.randint(0, 50, (8 * 5 + 3,))
    x, y = tokens[:40].view(5, 8), tokens[1:41].view(5, 8)
    with torch.no_grad():
        want = model(x, y).loss.item()
    assert abs(evaluate_all(model, tokens, block_size=8, batch_size=2) - want) < 1e-6
    with pytest.raises(ValueError, match="hold no window"):
        evaluate_all(model, tokens[:5], block_size=8)


# --- the course model, cached ---------------------------------------------------------------------


def test_load_or_train_trains_once_then_loads(tokens, tmp_path, monkeypatch):
    tiny = GPTConfig(**TINY)
    config = tiny_config(max_steps=6)
    first = course_model.load_or_train(tmp_path / "m", tiny, config, tokens, progress=False)
    assert first.train_state.step == 6 and first.tokenizer.vocab_size == data.VOCAB_SIZE
    assert (tmp_path / "m.metrics.jsonl").is_file()

    def no_training(*args, **kwargs):
        raise AssertionError("trained again instead of loading the cache")

    monkeypatch.setattr(course_model, "train", no_training)
    again = course_model.load_or_train(tmp_path / "m", tiny, config, tokens, progress=False)
    assert_same_weights(first.model, again.model)


def test_load_or_train_resumes_a_run_cut_short_to_the_same_weights(tokens, tmp_path):
    tiny, config = GPTConfig(**TINY), tiny_config(max_steps=10)
    straight = course_model.load_or_train(tmp_path / "a", tiny, config, tokens, progress=False)
    torch.manual_seed(config.seed)
    cut = replace(config, checkpoint_dir=tmp_path / "b", stop_at_step=4)
    train(GPT(tiny), tokens, cut, tokenizer=data.course_tokenizer())  # as if closed at step 4
    assert load_train_state(tmp_path / "b").step == 4
    resumed = course_model.load_or_train(tmp_path / "b", tiny, config, tokens, progress=False)
    assert resumed.train_state.step == 10
    assert_same_weights(straight.model, resumed.model)


def test_load_or_train_never_overwrites_a_model_trained_another_way(tokens, tmp_path):
    tiny = GPTConfig(**TINY)
    course_model.load_or_train(tmp_path / "m", tiny, tiny_config(max_steps=4), tokens)
    with pytest.raises(CheckpointError, match=r"max_steps=4 \(wanted: 8\).*Move or delete"):
        course_model.load_or_train(tmp_path / "m", tiny, tiny_config(max_steps=8), tokens)
    with pytest.raises(CheckpointError, match=r"n_embd=32 \(wanted: 64\)"):
        wider = replace(tiny, n_embd=64)
        course_model.load_or_train(tmp_path / "m", wider, tiny_config(max_steps=4), tokens)


def test_cli_train_uses_the_course_schedule(text_file, tmp_path):
    out = tmp_path / "run"
    assert cli.main(["train", "--text", str(text_file), *TINY_CLI, "--out", str(out),
                     "--max-steps", "2"]) == 0  # fmt: skip
    saved = load_checkpoint(out).train_config
    course = TrainConfig.course()
    for key in ("lr", "min_lr", "weight_decay", "grad_clip", "seed"):
        assert saved[key] == getattr(course, key), key
    assert saved["keep_best"]  # a learner's text: the best checkpoint is kept


def test_course_preset_is_the_sweep_winner():
    model, schedule = GPTConfig.course(), TrainConfig.course()
    assert (model.n_layer, model.n_embd, model.block_size, schedule.batch_size) == (3, 128, 128, 32)
    assert (schedule.max_steps, schedule.lr) == (COURSE_STEPS, 3e-3)
    # The sweep's schedule (benchmarks/sweep_course_model.py): warm-up 5%, down to lr / 10.
    assert schedule.warmup_steps == schedule.max_steps // 20
    assert schedule.min_lr == schedule.lr / 10


def test_matmul_peak_is_the_best_rate_of_a_timed_matrix_multiply(monkeypatch):
    """2 n³ FLOPs over the fastest of the timed multiplies, whatever the clock says."""
    ticks = iter(range(1000))  # a clock that advances one second per reading
    monkeypatch.setattr(metrics.time, "perf_counter", lambda: float(next(ticks)))
    assert metrics.matmul_peak("cpu", reps=2) == 2 * 2048**3  # one second per multiply
    assert 1e8 < metrics.matmul_peak("cpu", reps=1) < float("inf")
