"""course_lib.finetune against Hugging Face peft (the independent reference): the same A and B
give the same outputs, the same delta weight, the same trainable-parameter count; merging folds
the update in and peft's unmerge takes it out again; adapters cross between the two libraries
with equal logits. And the classification head: padding never changes a prediction.

peft runs on ``model.to_hf()`` (GPT-2's Conv1D layers, hence fan_in_fan_out=True); models are
random and tiny, so nothing is downloaded.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from course_lib import data
from course_lib.checkpoint import CheckpointError, load_checkpoint
from course_lib.config import TrainConfig
from course_lib.finetune import (
    LoRALinear,
    add_classifier,
    add_lora,
    classify,
    load_adapter,
    merge_lora,
    save_adapter,
)
from course_lib.model import GPT, GPTConfig
from course_lib.train import train

SHAPE = dict(vocab_size=100, block_size=16, n_layer=2, n_head=2, n_embd=32)
TARGETS = ["c_attn", "c_proj", "c_fc"]
ATOL = 1e-5  # float32; measured differences are about 1e-7


def base_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(**SHAPE)).eval()


def ids(B: int = 2, T: int = 16) -> torch.Tensor:
    return torch.randint(0, SHAPE["vocab_size"], (B, T), generator=torch.Generator().manual_seed(3))


def trained_lora(rank: int = 4, alpha: float = 8.0, targets=TARGETS) -> GPT:
    """A model with adapters whose B is not zero (as after training), so the update shows."""
    model = add_lora(base_model(), rank=rank, alpha=alpha, targets=targets)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(5))
    return model.eval()


def peft_twin(model: GPT, rank: int = 4, alpha: float = 8.0, targets=TARGETS) -> PeftModel:
    """peft's LoRA on the same base weights, with our A and B copied in."""
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, fan_in_fan_out=True,
                        lora_dropout=0.0, task_type="CAUSAL_LM")  # fmt: skip
    peft_model = get_peft_model(base_model().to_hf(), config)
    ours = {k: v for k, v in model.state_dict().items() if ".lora_" in k}
    theirs = peft_model.state_dict()
    with torch.no_grad():
        for name, t in ours.items():
            key = "base_model.model." + name.replace(".weight", ".default.weight")
            theirs[key].copy_(t)
    return peft_model.eval()


def test_same_a_and_b_give_the_same_logits_as_peft():
    model = trained_lora()
    twin = peft_twin(model)
    torch.testing.assert_close(model(ids()).logits, twin(ids()).logits, atol=ATOL, rtol=0)
    assert not torch.allclose(model(ids()).logits, base_model()(ids()).logits, atol=1e-3)


def test_b_starts_at_zero_so_the_model_starts_unchanged():
    model = add_lora(base_model(), rank=4, alpha=8.0, targets=TARGETS)
    assert torch.equal(model(ids()).logits, base_model()(ids()).logits)


def test_delta_weight_is_b_a_times_alpha_over_rank_as_in_peft():
    model = trained_lora(rank=4, alpha=12.0)
    twin = peft_twin(model, alpha=12.0)
    ours = model.transformer.h[1].mlp.c_fc
    theirs = twin.base_model.model.transformer.h[1].mlp.c_fc
    expected = (12.0 / 4) * ours.lora_B.weight @ ours.lora_A.weight
    torch.testing.assert_close(ours.delta_weight(), expected, atol=0, rtol=0)
    # GPT-2's Conv1D stores (in, out): peft's delta is our (out, in) transposed.
    torch.testing.assert_close(theirs.get_delta_weight("default").t(), expected, atol=1e-7, rtol=0)


def test_trainable_parameter_counts_agree_with_peft():
    for targets in (["c_attn"], TARGETS):
        model = add_lora(base_model(), rank=8, alpha=16.0, targets=targets)
        twin = peft_twin(model, rank=8, alpha=16.0, targets=targets)
        ours = sum(p.numel() for p in model.parameters() if p.requires_grad)
        trainable, _ = twin.get_nb_trainable_parameters()
        assert ours == trainable, targets


def test_merge_folds_the_update_in_and_peft_unmerge_restores_the_base():
    model = trained_lora()
    before = model(ids()).logits
    twin = peft_twin(model)
    merged = merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    assert merged.changes == []  # the plain architecture again: it converts to GPT-2
    torch.testing.assert_close(merged(ids()).logits, before, atol=ATOL, rtol=0)
    hf = merged.to_hf().eval()
    torch.testing.assert_close(hf(ids()).logits, before, atol=ATOL, rtol=0)
    twin.merge_adapter()
    c_fc = twin.base_model.model.transformer.h[0].mlp.c_fc.base_layer.weight
    torch.testing.assert_close(c_fc.t(), merged.transformer.h[0].mlp.c_fc.weight, atol=1e-6,
                               rtol=0)  # fmt: skip
    twin.unmerge_adapter()
    torch.testing.assert_close(
        twin.base_model.model.transformer.h[0].mlp.c_fc.base_layer.weight.t(),
        base_model().transformer.h[0].mlp.c_fc.weight, atol=1e-6, rtol=0,
    )  # fmt: skip


def test_adapter_saved_here_loads_in_peft_with_equal_logits(tmp_path):
    model = trained_lora()
    save_adapter(model, tmp_path / "adapter")
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors"]  # fmt: skip
    peft_model = PeftModel.from_pretrained(base_model().to_hf(), tmp_path / "adapter").eval()
    torch.testing.assert_close(peft_model(ids()).logits, model(ids()).logits, atol=ATOL, rtol=0)


def test_adapter_saved_by_peft_loads_here_with_equal_logits(tmp_path):
    twin = peft_twin(trained_lora())
    twin.save_pretrained(tmp_path / "peft")
    model = load_adapter(base_model(), tmp_path / "peft").eval()
    torch.testing.assert_close(model(ids()).logits, twin(ids()).logits, atol=ATOL, rtol=0)
    assert model.changes[0]["args"]["rank"] == 4


def test_an_adapter_for_another_base_model_is_refused_naming_the_fix(tmp_path):
    save_adapter(trained_lora(), tmp_path / "adapter")
    torch.manual_seed(0)
    wider = GPT(GPTConfig(**{**SHAPE, "n_embd": 64}))
    with pytest.raises(ValueError, match=r"c_attn\.lora_A\.weight of shape \(4, 32\), but this "
                                         r"model has \(4, 64\).*another base model"):  # fmt: skip
        load_adapter(wider, tmp_path / "adapter")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="is not a LoRA adapter"):
        load_adapter(base_model(), tmp_path / "empty")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(rank=0), r"rank=0, expected an integer >= 1"),
        (dict(rank=40), r"rank=40 is larger than the layer \(96 x 32\)"),
        (dict(alpha=0.0), r"alpha=0.0, expected > 0"),
        (dict(targets=["wte"]), r"targets=\['wte'\]: LoRA wraps the blocks' projections"),
    ],
)
def test_bad_lora_settings_are_refused_naming_the_fix(kwargs, message):
    with pytest.raises(ValueError, match=message):
        add_lora(base_model(), **kwargs)


def test_lora_checkpoint_saves_loads_and_resumes_bit_for_bit(tmp_path):
    tokens = {"train": data.load_tokens("finetune")[:20_000] % 100,
              "val": data.load_tokens("finetune")[-5_000:] % 100}  # fmt: skip
    config = TrainConfig(batch_size=4, max_steps=8, warmup_steps=1, eval_interval=4,
                         eval_steps=2, checkpoint_interval=4, progress=False, lr=1e-2,
                         checkpoint_dir=str(tmp_path / "straight"))  # fmt: skip
    straight = add_lora(base_model(), rank=2, alpha=4.0)
    train(straight, tokens, config)
    cut = replace(config, checkpoint_dir=str(tmp_path / "cut"), stop_at_step=3)
    train(add_lora(base_model(), rank=2, alpha=4.0), tokens, cut)
    resumed = add_lora(base_model(seed=7), rank=2, alpha=4.0)
    train(resumed, tokens, replace(cut, stop_at_step=None), resume=True)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    loaded = load_checkpoint(tmp_path / "straight").model
    assert isinstance(loaded.transformer.h[0].attn.c_attn, LoRALinear)
    torch.testing.assert_close(loaded(ids()).logits, straight.eval()(ids()).logits, atol=0, rtol=0)
    meta = json.loads((tmp_path / "straight" / "config.json").read_text())
    assert meta["changes"][0]["change"] == "add_lora"


# --- the classification head -----------------------------------------------------------------


def test_padding_never_changes_a_prediction():
    model = add_classifier(base_model(), n_classes=4).eval()
    idx = ids(B=3)
    lengths = torch.tensor([16, 9, 5])
    padded = idx.clone()
    for row, n in enumerate(lengths):
        padded[row, n:] = 0  # whatever fills the rest
    scores = classify(model, idx, lengths)
    assert scores.shape == (3, 4)
    torch.testing.assert_close(classify(model, padded, lengths), scores, atol=0, rtol=0)
    alone = classify(model, idx[1:2, :9], torch.tensor([9]))  # the same passage, unpadded
    torch.testing.assert_close(alone, scores[1:2], atol=1e-6, rtol=0)


def test_classifier_head_round_trips_as_a_checkpoint(tmp_path):
    from course_lib.checkpoint import save_checkpoint

    model = add_classifier(base_model(), n_classes=3).eval()
    assert model.lm_head.weight is not model.transformer.wte.weight  # untied
    save_checkpoint(tmp_path / "clf", model)
    loaded = load_checkpoint(tmp_path / "clf").model
    lengths = torch.tensor([16, 7])
    assert torch.equal(classify(loaded, ids(), lengths), classify(model, ids(), lengths))
    with pytest.raises(ValueError, match=r"n_classes=1, expected an integer >= 2"):
        add_classifier(base_model(), n_classes=1)


# --- the poems: a fixed held-out set ------------------------------------------------------------


def test_held_out_poems_are_whole_sonnets_a_validation_and_a_test_part(splits):
    from course_lib.poems import HELD_OUT_SONNETS, VALIDATION_SONNETS, poem_splits, roman, sonnets

    numbered = sonnets(splits)
    assert len(numbered) == 154
    assert numbered[18].startswith("Shall I compare thee to a summer's day?")
    assert numbered[128].startswith("How oft when thou, my music, music play'st")  # misprinted
    assert (
        sum(len([x for x in s.splitlines() if x.strip()]) == 14 for s in numbered.values()) == 152
    )
    indented = [n for n, s in numbered.items() if s.splitlines()[-1].startswith("  ")]
    assert len(indented) == 153  # the closing couplet; the file forgot sonnet 25's indent
    texts = poem_splits(splits)
    held_out = len(texts["val"]) + len(texts["test"])
    share = held_out / (len(texts["train"]) + held_out)
    assert 0.08 < share < 0.10 and round(share, 3) == 0.090
    for split, held in [("test", HELD_OUT_SONNETS), ("val", VALIDATION_SONNETS)]:
        assert len(held) == 15
        for n in held:  # whole sonnets, each in exactly one part
            assert f"{roman(n)}\n\n{numbered[n]}" in texts[split]
            assert sum(numbered[n] in texts[s] for s in texts) == 1
    assert "From off a hill whose concave womb" in texts["train"]  # A Lover's Complaint
    assert [roman(n) for n in (4, 9, 14, 40, 49, 90, 99, 128, 154)] == [
        "IV", "IX", "XIV", "XL", "XLIX", "XC", "XCIX", "CXXVIII", "CLIV"]  # fmt: skip


# --- the command line ----------------------------------------------------------------------------


def finetune_args(root, out: str, *more: str) -> list[str]:
    return ["finetune", "--checkpoint", str(root / "base"), "--text", str(root / "tempest.txt"),
            "--rank", "2", "--batch-size", "4", "--max-steps", "8", "--out", str(root / out),
            *more]  # fmt: skip


def test_cli_finetune_writes_a_lora_checkpoint_that_resumes_bit_for_bit(cli_base, capsys):
    from course_lib import cli

    assert cli.main(finetune_args(cli_base, "straight")) == 0
    out = capsys.readouterr().out
    assert "step 8/8 (lora, 1,152 trainable parameters)" in out  # 2 x (2x(32+96) + 2x(32+128))
    assert cli.main(finetune_args(cli_base, "cut", "--max-minutes", "0")) == 0
    assert "stopped early (max_minutes)" in capsys.readouterr().out
    assert cli.main(finetune_args(cli_base, "cut", "--resume")) == 0
    a = load_checkpoint(cli_base / "straight").model.state_dict()
    b = load_checkpoint(cli_base / "cut").model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert ".lora_A.weight" in "".join(a)
    assert load_checkpoint(cli_base / "straight", which="best").train_state.best_val_loss  # kept

    assert cli.main(["eval", "--checkpoint", str(cli_base / "straight"), "--text",
                     str(cli_base / "tempest.txt")]) == 0  # fmt: skip
    assert re.search(r"\d\.\d{4} nats/token, \d\.\d{3} bits/char", capsys.readouterr().out)
    assert cli.main(["sample", "--checkpoint", str(cli_base / "straight"),
                     "--max-new-tokens", "5"]) == 0  # fmt: skip


def test_cli_finetune_and_eval_errors_name_the_fix(cli_base, tmp_path, capsys):
    from course_lib import cli

    assert cli.main(finetune_args(cli_base, "bad", "--rank", "0")) == 1
    assert "rank=0, expected an integer >= 1" in capsys.readouterr().err
    (tmp_path / "empty.txt").write_text("  \n")
    args = finetune_args(cli_base, "bad")
    args[args.index("--text") + 1] = str(tmp_path / "empty.txt")
    assert cli.main(args) == 1
    assert "is empty (or only whitespace)" in capsys.readouterr().err
    (tmp_path / "latin1.txt").write_bytes("Fair is foul, caf\xe9".encode("latin-1"))
    assert cli.main(["eval", "--checkpoint", str(cli_base / "base"), "--text",
                     str(tmp_path / "latin1.txt")]) == 1  # fmt: skip
    assert "is not UTF-8 text (byte 0xe9 at byte offset 17). Convert it" in capsys.readouterr().err


def test_cached_train_trains_a_lora_model_once_then_loads_it(tmp_path, monkeypatch):
    from course_lib import course_model

    tokens = {"train": data.load_tokens("finetune")[:20_000] % 100,
              "val": data.load_tokens("finetune")[-5_000:] % 100}  # fmt: skip
    config = TrainConfig(batch_size=4, max_steps=4, warmup_steps=1, eval_interval=4,
                         eval_steps=2, progress=False, lr=1e-2)  # fmt: skip

    def build(rank: int = 2):
        return lambda: add_lora(base_model(), rank=rank, alpha=4.0)

    first = course_model.cached_train(tmp_path / "lora", build(), tokens, config)
    assert first.train_state.step == 4 and isinstance(
        first.model.transformer.h[0].attn.c_attn, LoRALinear)  # fmt: skip

    def no_training(*args, **kwargs):
        raise AssertionError("trained again instead of loading the cache")

    monkeypatch.setattr(course_model, "train", no_training)
    again = course_model.cached_train(tmp_path / "lora", build(), tokens, config)
    assert torch.equal(again.model(ids()).logits, first.model(ids()).logits)
    with pytest.raises(CheckpointError, match=r"trained another way: changes .*'rank': 2.*"
                                              r"\(wanted: .*'rank': 4"):  # fmt: skip
        course_model.cached_train(tmp_path / "lora", build(rank=4), tokens, config)


def test_cached_train_stops_at_a_step_of_the_longer_schedule(tmp_path):
    from course_lib import course_model

    tokens = {"train": data.load_tokens("finetune")[:20_000] % 100,
              "val": data.load_tokens("finetune")[-5_000:] % 100}  # fmt: skip
    config = TrainConfig(batch_size=4, max_steps=6, warmup_steps=1, eval_interval=2,
                         eval_steps=2, progress=False, lr=1e-2)  # fmt: skip
    long = base_model()
    history = train(long, tokens, replace(config, stop_at_step=4)).history
    early = course_model.cached_train(
        tmp_path / "early", base_model, tokens, replace(config, stop_at_step=4)
    )
    assert early.train_state.step == 4
    assert torch.equal(early.model(ids()).logits, long(ids()).logits)
    log = [json.loads(line) for line in (tmp_path / "early.metrics.jsonl").open()]
    assert [h["val_loss"] for h in log if "val_loss" in h] == [
        h["val_loss"] for h in history if "val_loss" in h]  # fmt: skip
    full = course_model.cached_train(tmp_path / "full", base_model, tokens, config)
    assert full.train_state.step == 6
    with pytest.raises(CheckpointError, match="holds the model at step 6, past the step 4"):
        course_model.cached_train(tmp_path / "full", base_model, tokens,
                                  replace(config, stop_at_step=4))  # fmt: skip


def test_cached_train_keeps_the_best_and_refuses_a_cache_without_it(tmp_path):
    from course_lib import course_model

    tokens = {"train": data.load_tokens("finetune")[:20_000] % 100,
              "val": data.load_tokens("finetune")[-5_000:] % 100}  # fmt: skip
    config = TrainConfig(batch_size=4, max_steps=6, warmup_steps=1, eval_interval=2,
                         eval_steps=2, progress=False, lr=1e-2, keep_best=True)  # fmt: skip
    kept = course_model.cached_train(tmp_path / "kept", base_model, tokens, config)
    log = [json.loads(line) for line in (tmp_path / "kept.metrics.jsonl").open()]
    best = min((h for h in log if "val_loss" in h), key=lambda h: h["val_loss"])
    assert kept.which == "best" and kept.train_state.step == best["step"]
    again = course_model.cached_train(tmp_path / "kept", base_model, tokens, config)
    assert torch.equal(again.model(ids()).logits, kept.model(ids()).logits)

    course_model.cached_train(tmp_path / "plain", base_model, tokens,
                              replace(config, keep_best=False))  # fmt: skip
    refused = r"plain was trained without keep_best, so it has no best/ model to load: move or"
    with pytest.raises(CheckpointError, match=refused):
        course_model.cached_train(tmp_path / "plain", base_model, tokens, config)


def test_sonnet_form_measures_the_real_sonnets(splits):
    from course_lib.poems import sonnet_form, sonnets, syllables

    forms = [sonnet_form(s) for s in sonnets(splits).values()]
    # 154 sonnets: 99 has 15 lines, 126 has 12, 25's couplet lost its indent in the file.
    assert sum(f.is_sonnet_shaped for f in forms) == 151
    mean = sum(f.mean_syllables for f in forms) / len(forms)
    assert 10.0 < mean < 10.5  # iambic pentameter, by an approximate counter
    assert syllables("Shall I compare thee to a summer's day?") == 10
    assert syllables("") == 0
    text = "XVIII\n\n" + sonnets(splits)[18] + "\n\nXIX\n\nDevouring Time, blunt thou"
    assert sonnet_form(text).is_sonnet_shaped and sonnet_form(text).ended  # cut at the numeral
    cut = sonnet_form("I\n\nA line\n  and an indented one<|endoftext|>more")
    whole = sonnet_form("A line\n  and an indented one")
    assert cut.ended and not whole.ended  # a poem that ran to the end of the text did not end
    assert (cut.lines, cut.indented_couplet, cut.mean_syllables) == (2, False, whole.mean_syllables)
    assert sonnet_form("I\n\nA line\n\n\nanother poem").ended
    assert sonnet_form("\n\n").lines == 0
