"""Changed models are first-class: a GPT changed after it was built (a projection wrapped in a
low-rank adapter, a layer quantized to int8 codes and scales, heads pruned away) trains, saves,
loads and resumes like any other, because ``course_lib.changes`` records each change and a
checkpoint replays it before the weights go in.

The changes here are small, real ones written for the tests (Lessons 07 and 08 build the
course's own LoRA, quantization and pruning on the same mechanism); the code under test
(train, checkpoint, changes, model) runs for real on real tokens and real files.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from course_lib import data
from course_lib.changes import (
    OLD_NAMES,
    ChangeError,
    applied,
    change,
    changes_from_json,
    changes_shapes,
    forget,
    replay,
)
from course_lib.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_weights,
    model_differences,
    read_meta,
    save_checkpoint,
)
from course_lib.compress import prune_heads, quantize_int4
from course_lib.config import TrainConfig
from course_lib.errors import CourseError
from course_lib.finetune import add_lora
from course_lib.model import GPT, GPTConfig
from course_lib.optim import configure_optimizer
from course_lib.train import train

TINY = dict(vocab_size=data.VOCAB_SIZE, block_size=16, n_layer=2, n_head=2, n_embd=32)


class LowRank(nn.Module):
    """A frozen Linear plus a trainable low-rank update B @ A (LoRA's shape, B starting at 0)."""

    def __init__(self, base: nn.Linear, rank: int) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.A = nn.Parameter(torch.randn(rank, base.in_features) * 0.02)
        self.B = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + x @ self.A.t() @ self.B.t()


@change("wrap_attention")
def wrap_attention(model: GPT, rank: int = 2) -> GPT:
    """Freeze the model; wrap every c_attn in a trainable low-rank adapter."""
    model.requires_grad_(False)
    for block in model.transformer.h:
        block.attn.c_attn = LowRank(block.attn.c_attn, rank)
    return model


class Int8Linear(nn.Module):
    """Absmax int8 per output row: int8 codes and float scales, both buffers (nothing trains)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach()
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127
        self.register_buffer("weight", torch.round(w / scale[:, None]).to(torch.int8))
        self.register_buffer("scale", scale)
        self.register_buffer("bias", linear.bias.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight.float() * self.scale[:, None], self.bias)


@change("quantize_mlp")
def quantize_mlp(model: GPT, layers: list[int] | None = None) -> GPT:
    for i, block in enumerate(model.transformer.h):
        if layers is None or i in layers:
            block.mlp.c_fc = Int8Linear(block.mlp.c_fc)
    return model


@change("keep_heads")
def keep_heads(model: GPT, heads: dict[int, list[int]]) -> GPT:
    """Keep only the listed heads of each layer: {layer: [head, ...]}."""
    for layer, kept in heads.items():
        attn = model.transformer.h[layer].attn
        hd, C = attn.head_dim, attn.n_embd
        rows = torch.tensor([h * hd + i for h in kept for i in range(hd)])
        qkv = torch.cat([rows + part * attn.n_head * hd for part in range(3)])
        c_attn, c_proj = nn.Linear(C, 3 * len(rows)), nn.Linear(len(rows), C)
        with torch.no_grad():
            c_attn.weight.copy_(attn.c_attn.weight[qkv])
            c_attn.bias.copy_(attn.c_attn.bias[qkv])
            c_proj.weight.copy_(attn.c_proj.weight[:, rows])
            c_proj.bias.copy_(attn.c_proj.bias)
        attn.c_attn, attn.c_proj, attn.n_head = c_attn, c_proj, len(kept)
    return model


@change("keep_neurons")
def keep_neurons(model: GPT, layer: int, neurons: list[int]) -> GPT:
    """Keep only the listed hidden neurons of one layer's MLP (a narrower c_fc and c_proj)."""
    mlp = model.transformer.h[layer].mlp
    keep = torch.tensor(neurons)
    c_fc, c_proj = (
        nn.Linear(mlp.c_fc.in_features, len(keep)),
        nn.Linear(len(keep), mlp.c_proj.out_features),
    )
    with torch.no_grad():
        c_fc.weight.copy_(mlp.c_fc.weight[keep])
        c_fc.bias.copy_(mlp.c_fc.bias[keep])
        c_proj.weight.copy_(mlp.c_proj.weight[:, keep])
        c_proj.bias.copy_(mlp.c_proj.bias)
    mlp.c_fc, mlp.c_proj = c_fc, c_proj
    return model


def tiny_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(**TINY))


def tiny_config(**overrides) -> TrainConfig:
    defaults = dict(batch_size=4, max_steps=12, warmup_steps=2, eval_interval=4, eval_steps=2,
                    checkpoint_interval=4, progress=False, lr=3e-3)  # fmt: skip
    return TrainConfig(**{**defaults, **overrides})


@pytest.fixture(scope="module")
def tokens() -> dict[str, Tensor]:
    return {"train": data.load_tokens("train")[:50_000], "val": data.load_tokens("val")[:10_000]}


def same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --- recording and replaying ---------------------------------------------------------------------


def test_a_change_is_recorded_under_its_name_with_its_arguments():
    model = wrap_attention(tiny_model(), rank=3)
    assert model.changes == [{"change": "wrap_attention", "args": {"rank": 3}}]
    pruned = keep_heads(tiny_model(), {1: [0]})
    assert pruned.changes == [{"change": "keep_heads", "args": {"heads": {1: [0]}}}]


def test_replay_builds_the_same_structure():
    changed = wrap_attention(quantize_mlp(keep_heads(tiny_model(), {0: [1]})))
    rebuilt = replay(tiny_model(seed=1), changed.changes)
    shapes = {k: (v.shape, v.dtype) for k, v in changed.state_dict().items()}
    assert {k: (v.shape, v.dtype) for k, v in rebuilt.state_dict().items()} == shapes
    assert rebuilt.changes == changed.changes


def test_an_unknown_change_names_itself_and_the_fix():
    with pytest.raises(ChangeError, match=r"changed by magic, which this program does not know"):
        replay(tiny_model(), [{"change": "magic", "args": {}}])
    with pytest.raises(ChangeError, match="must be"):
        changes_from_json(["lora"])


SEEN: list[dict] = []  # the arguments note_arguments was called with, call by call


@change("note_arguments")
def note_arguments(model: GPT, heads: dict, targets: tuple | list = ("c_attn",)) -> GPT:
    """Change nothing; note the arguments, to compare the first call with the replay."""
    SEEN.append({"heads": heads, "targets": targets})
    return model


def test_int_keys_and_tuples_reach_the_replay_as_they_reached_the_first_call(tmp_path):
    SEEN.clear()
    heads = {0: [1], 2: (3, 4)}
    save_checkpoint(tmp_path / "c", note_arguments(tiny_model(), heads, ("c_attn", "c_fc")))
    load_checkpoint(tmp_path / "c")
    first, replayed = SEEN
    assert first == replayed == {"heads": heads, "targets": ("c_attn", "c_fc")}
    assert [type(k) for k in replayed["heads"]] == [int, int]  # not "0" and "2"
    assert type(replayed["heads"][2]) is tuple and type(replayed["targets"]) is tuple
    args = json.loads((tmp_path / "c" / "config.json").read_text())["changes"][0]["args"]
    assert args["heads"] == {"$int_keys": {"0": [1], "2": {"$tuple": [3, 4]}}}


@pytest.mark.parametrize(
    "heads",
    [{0: torch.tensor([1])}, {0: {1, 2}}, {0: [1], "1": [2]}, {"$tuple": [1]}],
    ids=["tensor", "set", "mixed-keys", "a-tag"],
)
def test_an_argument_a_checkpoint_would_not_give_back_equal_is_refused_naming_it(heads):
    model = tiny_model()
    with pytest.raises(CourseError, match=r"note_arguments: heads=.* cannot be recorded"):
        note_arguments(model, heads)
    assert model.changes == []


@change("wrap_and_quantize")
def wrap_and_quantize(model: GPT) -> GPT:
    """Two changes in one: replaying it calls both again, so it alone is recorded."""
    return quantize_mlp(wrap_attention(model))


TWIN: list[GPT] = []


@change("wrap_with_twin")
def wrap_with_twin(model: GPT) -> GPT:
    """Wrap the model, and TWIN[0] too: a change of another model, recorded there."""
    wrap_attention(TWIN[0])
    return wrap_attention(model)


def test_changes_called_by_a_change_of_the_same_model_are_part_of_it():
    nested = wrap_and_quantize(tiny_model())
    assert nested.changes == [{"change": "wrap_and_quantize", "args": {}}]
    rebuilt = replay(tiny_model(), nested.changes)
    assert rebuilt.state_dict().keys() == nested.state_dict().keys()
    TWIN[:] = [tiny_model()]
    model = wrap_with_twin(tiny_model())
    assert [c["change"] for c in model.changes] == ["wrap_with_twin"]
    assert [c["change"] for c in TWIN[0].changes] == ["wrap_attention"]


INSIDE, RELEASE = threading.Event(), threading.Event()


@change("wait_inside")
def wait_inside(model: GPT) -> GPT:
    """Change nothing; stay inside the change until the test releases it."""
    INSIDE.set()
    RELEASE.wait(timeout=60)
    return model


def test_a_change_running_in_another_thread_hides_no_change_of_this_one():
    INSIDE.clear()
    RELEASE.clear()
    waiting = tiny_model()
    thread = threading.Thread(target=wait_inside, args=(waiting,))
    thread.start()
    try:
        assert INSIDE.wait(timeout=60)
        model = wrap_attention(tiny_model())  # while wait_inside runs in the other thread
    finally:
        RELEASE.set()
        thread.join()
    assert [c["change"] for c in model.changes] == ["wrap_attention"]
    assert [c["change"] for c in waiting.changes] == ["wait_inside"]


def test_forget_drops_the_record_of_an_undone_change(tmp_path):
    model = wrap_attention(quantize_mlp(tiny_model(), layers=[1]), rank=3)
    assert applied(model, wrap_attention) == [{"change": "wrap_attention", "args": {"rank": 3}}]
    for block in model.transformer.h:  # undo the adapters: the plain c_attn again
        block.attn.c_attn = block.attn.c_attn.base
    forget(model, wrap_attention)
    assert model.changes == [{"change": "quantize_mlp", "args": {"layers": [1]}}]
    save_checkpoint(tmp_path / "u", model)  # loads: the replay builds no adapters
    assert same_state(load_checkpoint(tmp_path / "u").model, model)


@pytest.mark.parametrize(
    ("old_name", "build"),
    [
        ("course_lib.finetune.add_lora", lambda m: add_lora(m, 2, targets=["c_attn", "c_fc"])),
        ("course_lib.compress.prune.prune_heads", lambda m: prune_heads(m, {0: [1], 1: [0]})),
        ("course_lib.compress.quantize.quantize_int4", lambda m: quantize_int4(m, 32)),
        (f"{__name__}.keep_heads", lambda m: keep_heads(m, {1: [0]})),  # a learner's own
    ],
    ids=["add_lora", "prune_heads", "quantize_int4", "a-learners-change"],
)
def test_a_checkpoint_saved_before_changes_had_names_loads_as_the_same_model(
    old_name, build, tmp_path
):
    model = build(tiny_model()).eval()
    save_checkpoint(tmp_path / "old", model)
    config = tmp_path / "old" / "config.json"
    meta = json.loads(config.read_text())
    [record] = model.changes  # as course_lib wrote it then: module.function, plain JSON
    meta["changes"] = [{"change": old_name, "args": json.loads(json.dumps(record["args"]))}]
    meta["version"] = 2
    config.write_text(json.dumps(meta))
    loaded = load_checkpoint(tmp_path / "old").model
    assert loaded.changes == model.changes
    assert model_differences(read_meta(tmp_path / "old"), model, "wanted") == []  # cache hit
    idx = torch.randint(0, TINY["vocab_size"], (2, 16))
    assert torch.equal(loaded(idx).logits, model(idx).logits)


def test_loading_imports_the_course_module_that_registers_a_change(tmp_path):
    save_checkpoint(tmp_path / "q", quantize_int4(tiny_model(), 32))
    code = (
        "import sys; from course_lib.checkpoint import load_model; "
        "assert 'course_lib.compress.quantize' not in sys.modules; "
        "print(load_model(sys.argv[1]).changes)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "q")], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    assert out.strip() == "[{'change': 'quantize_int4', 'args': {'group_size': 32}}]"


def test_every_old_name_reads_as_a_change_the_course_registers():
    records = changes_from_json([{"change": old, "args": {}} for old in OLD_NAMES])
    assert [r["change"] for r in records] == list(OLD_NAMES.values())
    shapes = {r["change"]: changes_shapes(r) for r in records}  # each found, modules imported
    assert [name for name, changed in shapes.items() if not changed] == ["prune_magnitude"]


def test_a_change_is_registered_under_a_name_no_other_function_has():
    with pytest.raises(CourseError, match=r'@change needs the name .*write @change\("my_change"\)'):

        @change
        def unnamed(model: GPT) -> GPT:
            return model

    taken = rf"'wrap_attention' is taken by {re.escape(__name__)}\.wrap_attention"
    with pytest.raises(CourseError, match=taken):
        change("wrap_attention")(lambda model: model)
    change("wrap_attention")(wrap_attention.__wrapped__)  # the same function: a cell run again


# --- a wrapped projection: trains only what is new, saves, loads, resumes -------------------------


def test_only_trainable_parameters_reach_the_optimizer_and_adapters_are_not_decayed():
    model = wrap_attention(tiny_model())
    decay, no_decay = configure_optimizer(model, TrainConfig()).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["params"] == []  # the adapters' A and B are new: no decay unless asked
    assert sorted(names[id(p)] for p in no_decay["params"]) == sorted(
        f"transformer.h.{i}.attn.c_attn.{m}" for i in range(2) for m in "AB"
    )
    decay, _ = configure_optimizer(model, TrainConfig(decay_added=True)).param_groups
    assert len(decay["params"]) == 4


def test_wrapped_model_trains_only_the_adapters_and_resumes_bit_for_bit(tokens, tmp_path):
    base = tiny_model()
    straight = wrap_attention(tiny_model())
    whole = train(straight, tokens, tiny_config(checkpoint_dir=tmp_path / "straight"))
    assert whole.val_loss < whole.history[0]["val_loss"]  # the adapters learned something
    for name, p in base.state_dict().items():  # the base weights did not move
        key = name.replace("c_attn.", "c_attn.base.")
        assert torch.equal(straight.state_dict()[key], p), name

    config = tiny_config(checkpoint_dir=tmp_path / "cut", stop_at_step=6)
    train(wrap_attention(tiny_model()), tokens, config)
    resumed = wrap_attention(tiny_model(seed=9))  # other weights: all must come from the file
    rest = train(resumed, tokens, replace(config, stop_at_step=None), resume=True)
    assert [e.get("loss") for e in rest.history] == [e.get("loss") for e in whole.history[6:]]
    assert same_state(straight, resumed)

    loaded = load_checkpoint(tmp_path / "straight").model
    assert loaded.changes == straight.changes
    assert not any(p.requires_grad for n, p in loaded.named_parameters() if ".base." in n)
    idx = tokens["val"][:32].view(2, 16)
    assert torch.equal(loaded(idx).logits, straight.eval()(idx).logits)
    assert load_checkpoint(tmp_path / "straight").run["trainable"] == sorted(
        f"transformer.h.{i}.attn.c_attn.{m}" for i in range(2) for m in "AB"
    )


def test_resume_refuses_a_run_of_another_kind(tokens, tmp_path):
    def smoothed(net, batch):
        x, y = batch
        logits = net(x).logits
        return F.cross_entropy(logits.flatten(0, 1), y.flatten(), label_smoothing=0.1)

    config = tiny_config(max_steps=4, checkpoint_dir=tmp_path / "ckpt")
    train(tiny_model(), tokens, config, loss_fn=smoothed)
    with pytest.raises(CheckpointError, match=r"trained another way: loss .*smoothed \(this run: "
                                              r"course_lib\.train\.next_token_loss\)"):  # fmt: skip
        train(tiny_model(), tokens, replace(config, max_steps=8), resume=True)
    with pytest.raises(CheckpointError, match=r"changes .*wrap_attention"):
        train(wrap_attention(tiny_model()), tokens, replace(config, max_steps=8), resume=True,
              loss_fn=smoothed)  # fmt: skip


# --- a quantized layer: buffers of int8 codes and scales ------------------------------------------


def test_int8_layer_round_trips_with_its_scales(tmp_path):
    model = quantize_mlp(tiny_model()).eval()
    fp32 = tiny_model()
    c_fc = fp32.transformer.h[0].mlp.c_fc.weight
    # 4C x C float32 weights became int8 codes and 4C float32 scales.
    assert model.num_bytes() == fp32.num_bytes() - 2 * (3 * c_fc.numel() - 4 * c_fc.size(0))
    assert model.num_params() == fp32.num_params() + 2 * c_fc.size(0)  # codes + the scales
    save_checkpoint(tmp_path / "q", model)
    loaded = load_checkpoint(tmp_path / "q").model
    assert loaded.transformer.h[1].mlp.c_fc.weight.dtype == torch.int8
    assert same_state(model, loaded)
    idx = torch.randint(0, TINY["vocab_size"], (2, 16))
    assert torch.equal(loaded(idx).logits, model(idx).logits)


def test_int8_weights_into_an_unchanged_model_fail_naming_tensor_dtype_and_fix(tmp_path):
    save_checkpoint(tmp_path / "q", quantize_mlp(tiny_model(), layers=[1]))
    message = (r"holds transformer\.h\.1\.mlp\.c_fc\.weight as I8, but .* gives a model that "
               r"expects torch\.float32 there, and a cast would change the numbers silently: "
               r".*Put back the config\.json saved with these weights")  # fmt: skip
    with pytest.raises(CheckpointError, match=message):
        load_weights(tiny_model(), tmp_path / "q")
    meta = json.loads((tmp_path / "q" / "config.json").read_text())
    meta["changes"] = []  # a config.json that forgot the change
    (tmp_path / "q" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(tmp_path / "q")


# --- pruned heads: per-layer head counts ----------------------------------------------------------


def test_pruned_heads_round_trip_and_to_hf_refuses_naming_the_fix(tmp_path):
    model = keep_heads(tiny_model(), {0: [1]}).eval()
    assert (model.transformer.h[0].attn.n_head, model.transformer.h[1].attn.n_head) == (1, 2)
    # one head of 16 channels: its q, k, v rows (weights and biases) and its c_proj columns
    assert model.num_params() == tiny_model().num_params() - (4 * 16 * 32 + 3 * 16)
    save_checkpoint(tmp_path / "p", model)
    loaded = load_checkpoint(tmp_path / "p").model
    idx = torch.randint(0, TINY["vocab_size"], (2, 16))
    assert torch.equal(loaded(idx).logits, model(idx).logits)
    with pytest.raises(ValueError, match=r"changed since it was built \(keep_heads\).*Undo"):
        model.to_hf()


def test_a_narrower_mlp_trains_saves_and_loads(tokens, tmp_path):
    model = keep_neurons(tiny_model(), layer=1, neurons=list(range(0, 128, 2)))
    assert model.transformer.h[1].mlp.c_fc.out_features == 64  # 4C = 128 hidden, half kept
    assert model.num_params() == tiny_model().num_params() - 64 * (32 + 1 + 32)
    train(model, tokens, tiny_config(max_steps=4, checkpoint_dir=tmp_path / "m"))
    loaded = load_checkpoint(tmp_path / "m").model
    assert same_state(model, loaded)
    idx = tokens["val"][:32].view(2, 16)
    assert torch.equal(loaded(idx).logits, model.eval()(idx).logits)
