"""course_lib.compress.prune, against independent references: torch.nn.utils.prune's masks,
AdamW run for real, finite differences of the loss for the importance scores, and the unpruned
model with the removed heads and neurons gated to zero by hand. Pruned models save and load.

Models are random and tiny (2 layers, 4 heads of 8 channels, d_ff = 128); nothing is downloaded.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils import prune as torch_prune

from course_lib.checkpoint import load_checkpoint, save_checkpoint
from course_lib.compress.prune import (
    head_importance,
    least_important,
    magnitude_masks,
    neuron_importance,
    prune_heads,
    prune_magnitude,
    prune_neurons,
    random_units,
    sparsity,
)
from course_lib.compress.quantize import quantize_int8
from course_lib.finetune import add_lora
from course_lib.model import GPT, PROJECTIONS, GPTConfig

SHAPE = dict(vocab_size=64, block_size=16, n_layer=2, n_head=4, n_embd=32)
C, HD, D_FF = 32, 8, 128
AMOUNTS = [0.0, 0.1, 0.37, 0.5, 0.9]


def model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(**SHAPE)).eval()


def ids(B: int = 2, T: int = 16, seed: int = 3) -> Tensor:
    return torch.randint(
        0, SHAPE["vocab_size"], (B, T), generator=torch.Generator().manual_seed(seed)
    )


def batches(n: int = 2, seed: int = 5) -> list[tuple[Tensor, Tensor]]:
    out = []
    for i in range(n):
        seq = ids(4, 17, seed + i)
        out.append((seq[:, :-1], seq[:, 1:]))
    return out


def linears(m: GPT) -> list[tuple[str, nn.Linear]]:
    return [(f"transformer.h.{i}.{name}", block.get_submodule(name))
            for i, block in enumerate(m.transformer.h) for name in PROJECTIONS]  # fmt: skip


def with_ties(m: GPT) -> GPT:
    """Weights rounded to a few values: ties inside each matrix and across matrices."""
    with torch.no_grad():
        for _, layer in linears(m):
            layer.weight.copy_(torch.round(layer.weight * 100) / 100)
    return m


def gated(m: GPT, part: str, units: dict[int, list[int]], width: int) -> list:
    """Multiply the listed units' outputs by 0 where they enter <part>.c_proj (hooks returned)."""
    handles = []
    for layer, removed in units.items():
        proj = getattr(m.transformer.h[layer], part).c_proj
        gate = torch.ones(proj.in_features // width)
        gate[removed] = 0.0

        def hook(module, args, gate=gate):
            return (args[0].unflatten(-1, (-1, width)) * gate[:, None]).flatten(-2)

        handles.append(proj.register_forward_pre_hook(hook))
    return handles


def adamw_steps(m: GPT, n: int = 5) -> None:
    """n real AdamW steps with weight decay, in train mode, on random tokens."""
    m.train()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1)
    for x, y in batches(n, seed=11):
        m(x, y).loss.backward()
        opt.step()
        opt.zero_grad()
    m.eval()


# --- unstructured: torch.nn.utils.prune's masks ---------------------------------------------------


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("amount", AMOUNTS)
def test_layer_masks_equal_torchs_l1_unstructured(amount, ties):
    ours = magnitude_masks(with_ties(model()) if ties else model(), amount)
    reference = with_ties(model()) if ties else model()
    assert list(ours) == [f"{name}.weight" for name, _ in linears(reference)]
    for name, layer in linears(reference):
        torch_prune.l1_unstructured(layer, "weight", amount)
        assert ours[f"{name}.weight"].dtype == torch.bool
        assert torch.equal(ours[f"{name}.weight"], layer.weight_mask.bool()), name
        assert (~ours[f"{name}.weight"]).sum() == round(amount * layer.weight.numel())


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("amount", AMOUNTS)
def test_global_masks_equal_torchs_global_unstructured(amount, ties):
    ours = magnitude_masks(with_ties(model()) if ties else model(), amount, scope="global")
    reference = with_ties(model()) if ties else model()
    params = [(layer, "weight") for _, layer in linears(reference)]
    torch_prune.global_unstructured(
        params, pruning_method=torch_prune.L1Unstructured, amount=amount
    )
    for name, layer in linears(reference):
        assert torch.equal(ours[f"{name}.weight"], layer.weight_mask.bool()), name
    total = sum(m.numel() for m in ours.values())
    assert sum(int((~m).sum()) for m in ours.values()) == round(amount * total)


def test_ties_really_are_there_and_cross_matrices():
    """The tied weights above are not a formality: the cut falls inside a run of equal |w|,
    so which of them go depends on topk's tie-breaking, and the two scopes differ."""
    m = with_ties(model())
    scores = torch.cat([layer.weight.abs().flatten() for _, layer in linears(m)])
    k = round(0.37 * scores.numel())
    cut = scores.sort().values[k - 1]
    assert (scores == cut).sum() > 1 and (scores < cut).sum() < k < (scores <= cut).sum()
    layer, glob = magnitude_masks(m, 0.37), magnitude_masks(m, 0.37, "global")
    assert any(not torch.equal(layer[n], glob[n]) for n in layer)


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_prune_magnitude_zeroes_exactly_the_dropped_weights(scope):
    m, before = model(), model()
    masks = magnitude_masks(model(), 0.37, scope)
    prune_magnitude(m, 0.37, scope)
    assert m.changes == [{"change": "prune_magnitude", "args": {"amount": 0.37, "scope": scope}}]
    for name, p in m.named_parameters():
        old = before.get_parameter(name)
        if name in masks:
            assert torch.equal(p, torch.where(masks[name], old, 0.0)), name
            assert not torch.signbit(p[~masks[name]]).any()  # +0.0, no -0.0
        else:  # biases, LayerNorms, embeddings
            assert torch.equal(p, old), name


def test_sparsity_counts_the_zeros_of_the_block_matrices_only():
    assert sparsity(model()) == 0.0
    weights = [layer.weight for _, layer in linears(model())]
    total = sum(w.numel() for w in weights)
    m = prune_magnitude(model(), 0.37)
    assert sparsity(m) == sum(round(0.37 * w.numel()) for w in weights) / total
    assert sparsity(prune_magnitude(model(), 0.37, "global")) == round(0.37 * total) / total
    with torch.no_grad():
        m.transformer.h[0].attn.c_attn.bias.zero_()  # biases do not count
        m.transformer.wte.weight[0] = 0.0  # nor do the embeddings
    assert sparsity(m) == sum(round(0.37 * w.numel()) for w in weights) / total
    # pruning again counts the zeros already there, and hooks each weight once
    prune_magnitude(m, 0.5)
    assert sparsity(m) == 0.5
    assert all(len(layer.weight._backward_hooks) == 1 for _, layer in linears(m))


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_pruned_weights_stay_exactly_zero_through_adamw_with_weight_decay(scope):
    m = prune_magnitude(model(), 0.5, scope)
    zeros = {name: layer.weight == 0 for name, layer in linears(m)}
    kept = {name: layer.weight.detach().clone() for name, layer in linears(m)}
    adamw_steps(m)
    for name, layer in linears(m):
        assert torch.equal(layer.weight == 0, zeros[name]), name  # the same zeros, no others
        assert (layer.weight != kept[name])[~zeros[name]].float().mean() > 0.9  # the rest trained
    assert sparsity(m) == 0.5


def test_without_the_hook_adamw_would_move_the_zeros():
    """The control: zeroing alone is not enough, the gradient moves a zero at the first step."""
    m = model()
    with torch.no_grad():
        for name, mask in magnitude_masks(m, 0.5).items():
            m.get_parameter(name).masked_fill_(~mask, 0.0)
    adamw_steps(m, n=1)
    assert sparsity(m) < 0.01


def test_a_frozen_weight_gets_its_hook_for_when_it_trains_again():
    m = model().requires_grad_(False)
    prune_magnitude(m, 0.5)
    assert not any(p.requires_grad for p in m.parameters())
    adamw_steps(m.requires_grad_(True))
    assert sparsity(m) == 0.5


# --- importance: the gates' gradients -------------------------------------------------------------


def finite_difference_importance(m: GPT, part: str, width: int, data) -> Tensor:
    """(n_layer, n_units) importance from the loss itself: scaling a unit's c_proj columns by
    (1 ± eps) is scaling its gate; sum over batches of |central difference|, L2-normalised."""
    eps, rows = 1e-4, []
    for block in m.transformer.h:
        proj = getattr(block, part).c_proj
        score = torch.zeros(proj.in_features // width, dtype=torch.float64)
        for x, y in data:
            for unit in range(score.numel()):
                cols = slice(unit * width, (unit + 1) * width)
                losses = []
                for scale in (1 + eps, 1 - eps):
                    saved = proj.weight[:, cols].clone()
                    with torch.no_grad():
                        proj.weight[:, cols] *= scale
                        losses.append(m(x, y).loss.item())
                        proj.weight[:, cols] = saved
                score[unit] += abs(losses[0] - losses[1]) / (2 * eps)
        rows.append(score / score.norm())
    return torch.stack(rows)


def test_head_importance_equals_finite_differences_of_the_loss():
    m, data = model().double(), batches(2)
    got = head_importance(m, data)
    assert got.shape == (2, 4) and got.dtype == torch.float32
    assert torch.allclose(got.norm(dim=1), torch.ones(2))
    expected = finite_difference_importance(m, "attn", HD, data)
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-4)


def test_neuron_importance_equals_finite_differences_of_the_loss():
    m, data = model().double(), batches(1)
    m.transformer.h = m.transformer.h[:1]  # one layer: 128 units x 2 losses is enough
    got = neuron_importance(m, data)
    assert got.shape == (1, D_FF)
    torch.testing.assert_close(
        got.double(), finite_difference_importance(m, "mlp", 1, data), atol=1e-5, rtol=1e-4
    )


def test_importance_leaves_the_model_as_it_was():
    m = model().train()
    m.transformer.h[1].mlp.c_fc.weight.requires_grad_(False)  # e.g. frozen by the learner
    flags = [p.requires_grad for p in m.parameters()]
    state = {k: v.clone() for k, v in m.state_dict().items()}
    with torch.no_grad():  # the caller's no_grad does not stop the measurement
        head_importance(m, batches())
    neuron_importance(m, iter(batches()))  # any iterable of (x, y)
    assert m.training
    assert [p.requires_grad for p in m.parameters()] == flags
    assert all(p.grad is None for p in m.parameters())
    assert all(not module._forward_pre_hooks for module in m.modules())
    assert all(torch.equal(v, state[k]) for k, v in m.state_dict().items())


def test_a_head_whose_output_is_zeroed_has_importance_zero_and_sorts_first():
    m = model()
    with torch.no_grad():  # head 2 of layer 1: its values are 0, so its output is 0
        v_rows = slice(2 * C + 2 * HD, 2 * C + 3 * HD)
        m.transformer.h[1].attn.c_attn.weight[v_rows] = 0.0
        m.transformer.h[1].attn.c_attn.bias[v_rows] = 0.0
    importance = head_importance(m, batches())
    assert importance[1, 2] == 0.0 and (importance.flatten().sort().values[1:] > 1e-3).all()
    assert least_important(importance, 1) == {1: [2]}


def test_a_neuron_whose_output_is_zeroed_has_importance_zero_and_sorts_first():
    m = model()
    with torch.no_grad():
        m.transformer.h[0].mlp.c_proj.weight[:, 77] = 0.0
    importance = neuron_importance(m, batches())
    assert importance.shape == (2, D_FF) and importance[0, 77] == 0.0
    assert least_important(importance, 1) == {0: [77]}


def test_importance_of_a_pruned_model_pads_the_missing_heads_with_nan():
    m = prune_heads(model(), {0: [0, 3]})
    importance = head_importance(m, batches())
    assert importance.shape == (2, 4)
    assert importance[0, 2:].isnan().all() and not importance[0, :2].isnan().any()
    assert torch.allclose(importance[0, :2].norm(), torch.tensor(1.0))
    least = least_important(importance, 4)  # layer 0 can give 1 more, layer 1 three
    assert sorted(len(v) for v in least.values()) == [1, 3] and least[0] in ([0], [1])
    with pytest.raises(ValueError, match=r"count=5, expected an integer in \[0, 4\]"):
        least_important(importance, 5)


# --- choosing the units ---------------------------------------------------------------------------


def test_least_important_takes_the_lowest_overall_but_never_a_whole_layer():
    importance = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.9, 0.8, 0.7, 0.6]])
    assert least_important(importance, 0) == {}
    assert least_important(importance, 2) == {0: [0, 1]}
    assert least_important(importance, 4) == {0: [0, 1, 2], 1: [3]}  # 0.4 passed over
    assert least_important(importance, 6) == {0: [0, 1, 2], 1: [1, 2, 3]}
    ties = torch.zeros(2, 4)
    assert least_important(ties, 4) == {0: [0, 1, 2], 1: [0]}  # lower layer, then lower unit
    for seed in range(20):
        scores = torch.rand(3, 5, generator=torch.Generator().manual_seed(seed))
        for count in range(13):
            chosen = least_important(scores, count)
            assert sum(map(len, chosen.values())) == count
            assert all(len(units) < 5 for units in chosen.values())
            taken = torch.zeros(3, 5, dtype=torch.bool)
            for layer, units in chosen.items():
                taken[layer, units] = True
            # every unit passed over is the last of its layer or scores at least as high
            for layer in range(3):
                left = scores[layer][~taken[layer]]
                assert left.numel() == 1 or not count or left.min() >= scores[taken].max()


def test_random_units_never_empty_a_layer_and_reproduce_with_their_generator():
    seen = torch.zeros(2, 4)
    for seed in range(200):
        chosen = random_units((2, 4), 5, torch.Generator().manual_seed(seed))
        assert sum(map(len, chosen.values())) == 5
        assert all(len(units) <= 3 for units in chosen.values())
        for layer, units in chosen.items():
            seen[layer, units] += 1
    assert (seen > 0).all()
    assert (seen / 200 - 5 / 8).abs().max() < 0.15  # each unit about equally likely
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert random_units((12, 12), 40, g1) == random_units((12, 12), 40, g2)


# --- structured: removing is zeroing --------------------------------------------------------------


HEADS = {0: [1], 1: [0, 3]}
NEURONS = {0: list(range(0, D_FF, 3)), 1: [5, 100]}


def assert_same_with_cache(pruned: GPT, reference: GPT, idx: Tensor) -> None:
    """pruned == reference on the fused path, the need_weights path, and token by token."""
    want = reference(idx).logits
    torch.testing.assert_close(pruned(idx).logits, want, atol=1e-6, rtol=0)
    out = pruned(idx, need_weights=True)
    torch.testing.assert_close(out.logits, want, atol=1e-6, rtol=0)
    cache = pruned.new_kv_cache()
    steps = [pruned(idx[:, t : t + 1], kv_cache=cache).logits for t in range(idx.size(1))]
    torch.testing.assert_close(torch.cat(steps, dim=1), want, atol=1e-5, rtol=0)


def test_pruned_heads_give_the_outputs_of_those_heads_gated_to_zero():
    reference, pruned = model(), prune_heads(model(), HEADS)
    assert [block.attn.n_head for block in pruned.transformer.h] == [3, 2]
    assert [block.attn.head_dim for block in pruned.transformer.h] == [HD, HD]
    gated(reference, "attn", HEADS, HD)
    assert_same_with_cache(pruned, reference, ids())
    # the attention maps of the kept heads are those of the same heads, gated
    att = pruned(ids(), need_weights=True).attentions
    before = reference(ids(), need_weights=True).attentions
    torch.testing.assert_close(att[0], before[0][:, [0, 2, 3]])
    torch.testing.assert_close(att[1], before[1][:, [1, 2]])


def test_pruned_neurons_give_the_outputs_of_those_neurons_gated_to_zero():
    reference, pruned = model(), prune_neurons(model(), NEURONS)
    assert [b.mlp.c_fc.out_features for b in pruned.transformer.h] == [D_FF - 43, D_FF - 2]
    gated(reference, "mlp", NEURONS, 1)
    assert_same_with_cache(pruned, reference, ids())


def test_parameter_counts_drop_by_exactly_the_removed_units():
    full = model().param_counts()
    heads = prune_heads(model(), HEADS).param_counts()
    # a head: its q, k, v rows of C weights and a bias each, and its HD input columns of c_proj
    assert full["attention"] - heads["attention"] == 3 * (3 * HD * (C + 1) + HD * C)
    neurons = prune_neurons(model(), NEURONS).param_counts()
    # a neuron: its c_fc row (C weights, a bias) and its c_proj column (C weights)
    assert full["mlp"] - neurons["mlp"] == 45 * (C + 1 + C)
    assert {k: v for k, v in neurons.items() if k != "mlp"} == {
        k: v for k, v in full.items() if k != "mlp"
    }


def test_head_indices_count_the_heads_a_layer_has_now():
    once = prune_heads(model(), {0: [0, 1]})
    twice = prune_heads(prune_heads(model(), {0: [0]}), {0: [0]})  # old head 1 is head 0 now
    assert len(twice.changes) == 2
    assert all(torch.equal(v, once.state_dict()[k]) for k, v in twice.state_dict().items())
    assert prune_neurons(model(), {0: [9, 2]}).changes[0]["args"] == {"neurons": {0: [9, 2]}}


def test_a_recovery_fine_tune_after_pruning_keeps_magnitude_zeros_in_the_narrowed_weights():
    m = prune_heads(prune_neurons(prune_magnitude(model(), 0.5), NEURONS), HEADS)
    zeros = {name: layer.weight == 0 for name, layer in linears(m)}
    assert all(z.float().mean() > 0.4 for z in zeros.values())
    adamw_steps(m)
    assert all(torch.equal(layer.weight == 0, zeros[name]) for name, layer in linears(m))


# --- checkpoints: the changes replay --------------------------------------------------------------


def test_checkpoint_round_trip_of_a_pruned_model_gives_identical_logits(tmp_path):
    m = prune_neurons(prune_heads(prune_magnitude(model(), 0.6, "global"), HEADS), NEURONS)
    adamw_steps(m, n=2)  # weights that differ from any freshly pruned model's
    save_checkpoint(tmp_path / "p", m)
    loaded = load_checkpoint(tmp_path / "p").model
    assert loaded.changes == m.changes and len(loaded.changes) == 3
    assert loaded.changes[1]["args"] == {"heads": {0: [1], 1: [0, 3]}}
    assert torch.equal(loaded(ids()).logits, m(ids()).logits)
    assert sparsity(loaded) == sparsity(m) > 0.5
    # the replayed hooks read the loaded weights: their zeros, not the random model's, stay
    zeros = {name: layer.weight == 0 for name, layer in linears(loaded)}
    adamw_steps(loaded)
    assert all(torch.equal(layer.weight == 0, zeros[name]) for name, layer in linears(loaded))


# --- mistakes, refused with the fix ---------------------------------------------------------------


@pytest.mark.parametrize("amount", [1.0, 1, -0.1, 50, True, "0.5", math.nan])
def test_amounts_outside_0_to_1_are_refused(amount):
    message = re.escape(f"amount={amount!r} is the fraction of the weights to prune")
    with pytest.raises(ValueError, match=message + r", expected a number in \[0, 1\)"):
        prune_magnitude(model(), amount)


def test_unknown_scopes_are_refused():
    with pytest.raises(ValueError, match=r"scope='local', expected 'layer' .* or 'global'"):
        prune_magnitude(model(), 0.5, scope="local")
    with pytest.raises(ValueError, match=r"scope='Global'"):
        magnitude_masks(model(), 0.5, scope="Global")


def test_bad_heads_are_refused_naming_the_fix():
    cases = {
        r"layer 2 is out of range: the model has 2 layers, 0 \.\. 1": {2: [0]},
        r"head 4 of layer 0 is out of range: the layer has 4 heads now, 0 \.\. 3": {0: [4]},
        r"head -1 of layer 1 is out of range": {1: [-1]},
        r"head 1 is listed twice for layer 0: list each once": {0: [1, 2, 1]},
        r"would remove all 4 heads of layer 1: keep at least one head in layer 1 \(remove at "
        r"most 3\), or remove the layer": {1: [0, 1, 2, 3]},
        r"'x' is not a layer number: use \{0: \[1, 3\]\}": {"x": [0]},
        r"the heads of layer 0 must be a list of integers, got 1": {0: 1},
        r"the heads of layer 0 must be a list of integers, got \[1\.0\]": {0: [1.0]},
        r"'0' is not a layer number: use \{0: \[1, 3\]\} \(int keys\)": {"0": [1]},
    }
    for message, heads in cases.items():
        with pytest.raises(ValueError, match=message):
            prune_heads(model(), heads)
    with pytest.raises(ValueError, match=r"heads must be a dict \{layer: \[head, \.\.\.\]\}"):
        prune_heads(model(), [[0, 1]])
    # a head removed before is out of range now, and the message says why
    m = prune_heads(model(), {0: [3]})
    message = r"head 3 of layer 0 is out of range: the layer has 3 heads now.*after any earlier"
    with pytest.raises(ValueError, match=message + r" prune_heads: head_importance"):
        prune_heads(m, {0: [3]})
    assert m.transformer.h[0].attn.n_head == 3 and len(m.changes) == 1  # nothing half-done
    with pytest.raises(ValueError, match="head 9 of layer 1 is out of range"):
        prune_heads(m, {0: [0], 1: [9]})  # layer 0 is checked, and fine, but not pruned
    assert m.transformer.h[0].attn.n_head == 3


def test_bad_neurons_are_refused_naming_the_fix():
    with pytest.raises(ValueError, match=r"would remove all 128 neurons of layer 0: keep at least"):
        prune_neurons(model(), {0: list(range(D_FF))})
    with pytest.raises(ValueError, match=r"neuron 128 of layer 1 is out of range: the layer has"):
        prune_neurons(model(), {1: [128]})
    with pytest.raises(ValueError, match=r"neuron 3 is listed twice for layer 1"):
        prune_neurons(model(), {1: [3, 3]})


def test_adapters_and_quantized_layers_are_refused_naming_the_fix():
    message = r"c_attn is a LoRALinear, and prune_heads works on plain nn\.Linear .*merge_lora"
    with pytest.raises(ValueError, match=message):
        prune_heads(add_lora(model(), rank=2), {0: [0]})
    with pytest.raises(ValueError, match=r"is a Int8Linear, .*prune before .*quantizing"):
        prune_magnitude(quantize_int8(model()), 0.5)
    with pytest.raises(ValueError, match=r"is a Int8Linear, and sparsity"):
        sparsity(quantize_int8(model()))


def test_bad_importance_counts_and_shapes_are_refused():
    with pytest.raises(ValueError, match=r"count=7, expected an integer in \[0, 6\]: each of"):
        least_important(torch.rand(2, 4), 7)
    with pytest.raises(ValueError, match=r"count=-1"):
        least_important(torch.rand(2, 4), -1)
    with pytest.raises(ValueError, match=r"importance must be \(n_layer, n_units\).*\(8,\)"):
        least_important(torch.rand(8), 1)
    with pytest.raises(ValueError, match=r"shape must be \(n_layer, n_units\)"):
        random_units((8,), 1)
    with pytest.raises(ValueError, match="batches is empty"):
        head_importance(model(), [])


def test_to_hf_converts_a_magnitude_pruned_model_and_refuses_removed_heads_naming_why():
    pruned = prune_magnitude(model(), 0.5).eval()
    idx = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # zeros are plain weights: GPT-2's architecture still
        assert torch.allclose(pruned.to_hf()(idx).logits, pruned(idx).logits, atol=1e-5)
    for removed in (prune_heads(model(), {0: [1]}), prune_neurons(model(), {1: [0, 5]})):
        with pytest.raises(ValueError, match="pruned heads and neurons cannot be undone"):
            removed.to_hf()
