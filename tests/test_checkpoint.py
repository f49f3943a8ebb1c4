"""course_lib.checkpoint: a folder of safetensors and JSON that round-trips a model, its tokenizer
and its training state; written atomically; never unpickled; damage explained, with the fix.

Damage is real damage: a truncated weights file, an edited config.json, a save that dies half
way, a swap cut between its two renames.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
from pathlib import Path

import pytest
import safetensors.torch
import torch
from safetensors import safe_open

from course_lib import checkpoint, data
from course_lib.checkpoint import (
    CheckpointError,
    TrainState,
    load_checkpoint,
    load_model,
    load_train_state,
    save_checkpoint,
)
from course_lib.model import GPT, GPTConfig
from course_lib.tokenizer import BPETokenizer

VOCAB = 300
FILES = {
    "model.safetensors",
    "config.json",
    "tokenizer.json",
    "train_state.safetensors",
    "train_state.json",
}


@pytest.fixture(scope="module")
def tokenizer(splits) -> BPETokenizer:
    tok = BPETokenizer()
    tok.train(splits.val["tempest"].text[:20_000], VOCAB)
    return tok


def tiny_model(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    shape = dict(vocab_size=VOCAB, block_size=16, n_layer=2, n_head=2, n_embd=32)
    return GPT(GPTConfig(**{**shape, **overrides}))


def trained_optimizer(model: GPT) -> torch.optim.AdamW:
    """AdamW after one step, so it has moments to save."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    idx = torch.randint(0, VOCAB, (2, 9))
    model(idx[:, :-1], idx[:, 1:]).loss.backward()
    optimizer.step()
    return optimizer


def full_checkpoint(path: Path, tokenizer: BPETokenizer, seed: int = 0) -> GPT:
    model = tiny_model(seed)
    optimizer = trained_optimizer(model)
    state = TrainState.capture(step=1, generator=torch.Generator().manual_seed(5))
    save_checkpoint(path, model, tokenizer, optimizer, state, {"lr": 1e-3})
    return model


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), f"{name} differs"


# --- round trip ----------------------------------------------------------------------------------


def test_round_trip_gives_the_same_model_in_eval_mode(tokenizer, tmp_path):
    model = full_checkpoint(tmp_path / "ckpt", tokenizer).eval()
    ckpt = load_checkpoint(tmp_path / "ckpt")
    assert not ckpt.model.training
    assert ckpt.config == model.config
    assert_same_weights(model, ckpt.model)
    assert ckpt.model.lm_head.weight is ckpt.model.transformer.wte.weight  # still tied
    idx = torch.randint(0, VOCAB, (2, 16))
    assert torch.equal(model(idx).logits, ckpt.model(idx).logits)
    text = "Full fathom five thy father lies"
    assert ckpt.tokenizer.encode(text) == tokenizer.encode(text)
    assert ckpt.train_config == {"lr": 1e-3}
    assert_same_weights(model, load_model(tmp_path / "ckpt"))


def test_checkpoint_is_a_folder_of_safetensors_and_json(tokenizer, tmp_path):
    full_checkpoint(tmp_path / "ckpt", tokenizer)
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} == FILES
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary folder left behind
    with safe_open(tmp_path / "ckpt" / "model.safetensors", "pt") as f:
        names = set(f.keys())
    assert len(names & {"transformer.wte.weight", "lm_head.weight"}) == 1  # the tied one, once
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["model"]["n_embd"] == 32 and config["train"] == {"lr": 1e-3}


def test_train_state_restores_optimizer_and_every_rng(tokenizer, tmp_path):
    model = tiny_model()
    optimizer = trained_optimizer(model)
    generator = torch.Generator().manual_seed(5)
    torch.manual_seed(7)
    random.seed(7)
    state = TrainState.capture(step=1, generator=generator, elapsed_s=3.5)
    save_checkpoint(tmp_path / "ckpt", model, tokenizer, optimizer, state)
    expected = (torch.rand(3), random.random(), torch.rand(3, generator=generator))

    loaded = load_train_state(tmp_path / "ckpt")
    assert (loaded.step, loaded.elapsed_s) == (1, 3.5)
    again = torch.optim.AdamW(model.parameters(), lr=1e-3)
    again.load_state_dict(loaded.optimizer)
    for p in model.parameters():
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(again.state[p][key], optimizer.state[p][key])
    assert again.param_groups[0]["betas"] == optimizer.param_groups[0]["betas"]
    loaded.restore_rng(generator)
    assert torch.equal(torch.rand(3), expected[0])
    assert random.random() == expected[1]
    assert torch.equal(torch.rand(3, generator=generator), expected[2])


def test_checkpoint_without_train_state_loads_with_none(tmp_path):
    save_checkpoint(tmp_path / "ckpt", tiny_model())
    ckpt = load_checkpoint(tmp_path / "ckpt")
    assert (ckpt.tokenizer, ckpt.train_state, ckpt.train_config) == (None, None, None)
    with pytest.raises(ValueError, match="pass train_state too"):
        save_checkpoint(tmp_path / "other", tiny_model(), optimizer=trained_optimizer(tiny_model()))


def test_checkpoint_never_unpickles(tokenizer, tmp_path, monkeypatch):
    full_checkpoint(tmp_path / "ckpt", tokenizer)
    suffixes = {p.suffix for p in (tmp_path / "ckpt").iterdir()}
    assert suffixes == {".safetensors", ".json"}  # no .pt, .pth, .pkl, .bin

    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint must load without unpickling anything")

    for name in ("load", "loads"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    ckpt = load_checkpoint(tmp_path / "ckpt")
    assert ckpt.train_state.optimizer["state"]


# --- atomic writes -------------------------------------------------------------------------------


class TokenizerThatCrashes:
    """Stands in for a save that dies half way (a full disk, a kill): writes half, then fails."""

    vocab_size = VOCAB

    def save(self, path: Path) -> None:
        Path(path).write_text('{"version": "1.0", "mod')
        raise OSError(28, "No space left on device")


def test_crash_while_saving_keeps_the_previous_checkpoint(tokenizer, tmp_path):
    good = full_checkpoint(tmp_path / "ckpt", tokenizer, seed=0)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(tmp_path / "ckpt", tiny_model(seed=1), TokenizerThatCrashes())
    ckpt = load_checkpoint(tmp_path / "ckpt")
    assert_same_weights(good, ckpt.model)
    assert ckpt.train_state.step == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # the half-written folder is gone


def test_swap_cut_short_is_finished_on_load(tokenizer, tmp_path):
    # What a kill inside _swap_in leaves: the old checkpoint renamed away and half deleted, the
    # complete new one still under its temporary name, nothing under the checkpoint's name.
    full_checkpoint(tmp_path / "ckpt", tokenizer, seed=0)
    new = full_checkpoint(tmp_path / "new", tokenizer, seed=1)
    os.replace(tmp_path / "ckpt", tmp_path / "ckpt.old-4242")
    (tmp_path / "ckpt.old-4242" / "model.safetensors").unlink()
    os.replace(tmp_path / "new", tmp_path / "ckpt.tmp-4242")
    assert_same_weights(new, load_model(tmp_path / "ckpt"))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_save_killed_while_writing_leaves_the_checkpoint_and_the_next_save_sweeps_up(
    tokenizer, tmp_path
):
    good = full_checkpoint(tmp_path / "ckpt", tokenizer, seed=0)
    half = tmp_path / "ckpt.tmp-4242"  # a save killed before it wrote config.json
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"\x00" * 100)
    assert_same_weights(good, load_model(tmp_path / "ckpt"))
    full_checkpoint(tmp_path / "ckpt", tokenizer, seed=1)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_saving_the_last_carries_the_best_over_as_hard_links(tokenizer, tmp_path):
    run = tmp_path / "run"
    full_checkpoint(run, tokenizer, seed=0)
    best = tiny_model(seed=1)
    save_checkpoint(run / "best", best, tokenizer, None, TrainState(step=1, best_val_loss=5.0))
    before = (run / "best" / "model.safetensors").stat().st_ino
    last = tiny_model(seed=2)
    save_checkpoint(run, last, tokenizer, keep=("best",))
    assert (run / "best" / "model.safetensors").stat().st_ino == before  # linked, not copied
    assert_same_weights(best, load_model(run))
    assert_same_weights(last, load_model(run, which="last"))
    save_checkpoint(run, last, tokenizer)  # nothing kept: a run without keep_best
    assert not (run / "best").exists()


def test_a_swap_of_the_best_cut_short_is_finished_on_load(tokenizer, tmp_path):
    # A kill inside the best's swap: the old best renamed away, the new one complete under its
    # temporary name. The last is untouched, and the new best is found.
    run = tmp_path / "run"
    full_checkpoint(run, tokenizer, seed=0)
    full_checkpoint(run / "best", tokenizer, seed=1)
    new = full_checkpoint(tmp_path / "new", tokenizer, seed=2)
    os.replace(run / "best", run / "best.old-4242")
    os.replace(tmp_path / "new", run / "best.tmp-4242")
    assert_same_weights(new, load_checkpoint(run, which="best").model)
    assert sorted(p.name for p in (run / "best").parent.iterdir() if p.is_dir()) == ["best"]


# --- damage, explained ---------------------------------------------------------------------------


def test_missing_folder_gives_clear_error(tmp_path):
    message = r"no checkpoint at .*nowhere: train one with `course-lib train` or pass the folder"
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(tmp_path / "nowhere")


def test_weights_file_instead_of_folder_names_the_folder(tokenizer, tmp_path):
    full_checkpoint(tmp_path / "ckpt", tokenizer)
    with pytest.raises(CheckpointError, match="pass its folder"):
        load_checkpoint(tmp_path / "ckpt" / "model.safetensors")


def test_missing_file_gives_clear_error(tokenizer, tmp_path):
    full_checkpoint(tmp_path / "ckpt", tokenizer)
    (tmp_path / "ckpt" / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"has no config\.json: it is incomplete"):
        load_checkpoint(tmp_path / "ckpt")


def test_missing_half_of_train_state_gives_clear_error(tokenizer, tmp_path):
    full_checkpoint(tmp_path / "ckpt", tokenizer)
    (tmp_path / "ckpt" / "train_state.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no train_state\.safetensors: the training state"):
        load_checkpoint(tmp_path / "ckpt")


def test_corrupted_weights_file_gives_clear_error(tokenizer, tmp_path):
    full_checkpoint(tmp_path / "ckpt", tokenizer)
    weights = tmp_path / "ckpt" / "model.safetensors"
    blob = weights.read_bytes()
    weights.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors is damaged .* truncated"):
        load_checkpoint(tmp_path / "ckpt")


def test_config_that_does_not_match_weights_gives_clear_error(tokenizer, tmp_path):
    full_checkpoint(tmp_path / "ckpt", tokenizer)
    config_file = tmp_path / "ckpt" / "config.json"
    config = json.loads(config_file.read_text())
    config["model"]["n_embd"] = 64
    config_file.write_text(json.dumps(config))
    with pytest.raises(
        CheckpointError, match=r"the weights have n_embd=32 where it says n_embd=64.* Put back"
    ):
        load_checkpoint(tmp_path / "ckpt")


def test_invalid_config_gives_clear_error(tokenizer, tmp_path):
    full_checkpoint(tmp_path / "ckpt", tokenizer)
    (tmp_path / "ckpt" / "config.json").write_text('{"model": {"n_embd": 32')
    with pytest.raises(CheckpointError, match=r"config\.json is not a valid checkpoint config"):
        load_checkpoint(tmp_path / "ckpt")


def test_tokenizer_of_another_vocab_size_gives_clear_error(tokenizer, splits, tmp_path):
    full_checkpoint(tmp_path / "ckpt", tokenizer)
    other = BPETokenizer()
    other.train(splits.val["tempest"].text[:20_000], 280)
    other.save(tmp_path / "ckpt" / "tokenizer.json")
    message = "the tokenizer has 280 tokens but the model's vocab_size is 300"
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match=message):  # refused when saving, too
        save_checkpoint(tmp_path / "other", tiny_model(), other)


def test_module_names_the_layout_it_writes():
    files = {
        checkpoint.WEIGHTS,
        checkpoint.CONFIG,
        checkpoint.TOKENIZER,
        checkpoint.STATE_TENSORS,
        checkpoint.STATE_JSON,
    }
    assert files == FILES
    assert all(name in checkpoint.__doc__ for name in FILES)


# --- checkpoints written by earlier versions -----------------------------------------------------

V1 = Path(__file__).parent / "data" / "checkpoint_v1"


def test_a_checkpoint_of_format_version_1_loads_and_resumes(tmp_path):
    # Written by course_lib 0.1 (before models recorded their changes and runs): a 1-layer model
    # trained 3 of 6 steps with dropout, its logits on two windows stored beside it, and the
    # weights of the whole 6-step run (tests/data/checkpoint_v1*.safetensors).
    assert json.loads((V1 / "config.json").read_text())["version"] == 1
    ckpt = load_checkpoint(V1)
    assert (ckpt.model.changes, ckpt.run, ckpt.train_state.step) == ([], None, 3)
    expected = safetensors.torch.load_file(V1.parent / "checkpoint_v1.expected.safetensors")
    torch.testing.assert_close(ckpt.model(expected["idx"]).logits, expected["logits"],
                               atol=1e-6, rtol=0)  # fmt: skip

    from course_lib.config import TrainConfig
    from course_lib.train import train

    run = tmp_path / "run"
    shutil.copytree(V1, run)
    config = TrainConfig(**{**ckpt.train_config, "checkpoint_dir": str(run), "stop_at_step": None})
    text = ckpt.tokenizer.encode(data.load_splits().val["tempest"].text[:20_000])
    ids = torch.tensor(text)
    model = GPT(ckpt.config)
    train(model, {"train": ids[:16000], "val": ids[16000:]}, config, resume=True)
    after = safetensors.torch.load_file(V1.parent / "checkpoint_v1.after6.safetensors")
    for name, t in after.items():  # one thread wrote them, maybe not this run: 1e-6
        torch.testing.assert_close(model.state_dict()[name], t, atol=1e-6, rtol=0)
