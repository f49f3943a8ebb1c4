"""Pruning: the same GPT with fewer weights, or with fewer heads and neurons.

Lesson 08 (compression) derives this.

A trained network has many weights it hardly uses. Pruning removes them, in one of two ways:

- Unstructured, by magnitude (``prune_magnitude``): the weights of smallest |w| become 0, each
  matrix's own smallest (scope="layer") or the smallest of all the blocks' matrices together
  (scope="global"), exactly the masks of ``torch.nn.utils.prune``'s ``l1_unstructured`` and
  ``global_unstructured``. The matrices keep their shape: zeros save bytes only in a sparse
  format and time only with sparse kernels. A recovery fine-tune afterwards keeps them at 0.
- Structured, by importance (``prune_heads``, ``prune_neurons``): whole attention heads or MLP
  hidden units go, and the matrices shrink, so the model is smaller and faster as it is.
  Which ones? Michel, Levy & Neubig (2019, "Are Sixteen Heads Really Better than One?") put a
  gate g = 1 on each head's output and score the head by |d loss / d g| summed over batches
  (``head_importance``): to first order, how much the loss would change if the head were
  switched off. Scores are normalised per layer (L2); the lowest go first (``least_important``).

Removing a unit is the same as multiplying its output by 0: a head's output only reaches the
rest of the model through its columns of ``attn.c_proj`` (a hidden unit's, through its column of
``mlp.c_proj``), so cutting those columns, and the rows of c_attn / c_fc that compute it, leaves
every other number as it was.

Each prune_* is a ``@change``: a checkpoint records it and ``load_checkpoint`` replays it.

    >>> import torch
    >>> from course_lib.model import GPT, GPTConfig
    >>> from course_lib.compress.prune import (
    ...     head_importance, least_important, prune_heads, prune_magnitude, sparsity)
    >>> _ = torch.manual_seed(0)
    >>> model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=4, n_embd=32))
    >>> sparsity(prune_magnitude(model, 0.5))           # half of each block matrix is 0 now
    0.5
    >>> x = torch.randint(0, 64, (4, 17))
    >>> importance = head_importance(model, [(x[:, :-1], x[:, 1:])])  # (n_layer, n_head)
    >>> importance.shape, torch.allclose(importance.norm(dim=1), torch.ones(2))
    (torch.Size([2, 4]), True)
    >>> before = model.num_params()
    >>> heads = least_important(importance, 3)          # {layer: [head, ...]}, 3 heads in all
    >>> sum(block.attn.n_head for block in prune_heads(model, heads).transformer.h)
    5
    >>> before - model.num_params()  # 3 heads x (q, k, v: 3 x 8 rows of 32 + 1; c_proj: 8 x 32)
    3144
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from course_lib.changes import change, keeps_shapes
from course_lib.errors import CourseError
from course_lib.model import GPT

SCOPES = ("layer", "global")


def _projections(model: GPT, fn: str) -> list[tuple[str, nn.Linear]]:
    """(name, layer) of the four projections of every block (``model.projections()``), each
    checked to be an nn.Linear."""
    found = list(model.projections())
    for name, layer in found:
        if not isinstance(layer, nn.Linear):
            raise CourseError(
                f"{name} is a {type(layer).__name__}, and {fn} works on plain nn.Linear "
                f"layers: prune before adding LoRA adapters or quantizing (or undo them "
                f"first: merge_lora(model), dequantize(model))"
            )
    return found


# ---------------------------------------------------------------------------------------------
# Unstructured: the smallest weights become 0


def _smallest_out(scores: Tensor, k: int) -> Tensor:
    """A bool mask of scores' shape, False at the k smallest scores: torch.nn.utils.prune's
    choice (topk of the flattened scores, largest=False), ties and all."""
    mask = torch.ones_like(scores, dtype=torch.bool)
    mask.view(-1)[torch.topk(scores.flatten(), k, largest=False).indices] = False
    return mask


def magnitude_masks(model: GPT, amount: float, scope: str = "layer") -> dict[str, Tensor]:
    """Which weights magnitude pruning keeps: {"transformer.h.0.attn.c_attn.weight": mask, ...},
    one bool mask of each weight's shape (out, in) per projection of the blocks, True = kept.

    scope="layer": each matrix loses its own round(amount * numel) smallest |w|.
    scope="global": the round(amount * total) smallest |w| of all the matrices together go, so
    a matrix of small weights loses more than one of large weights. Biases, LayerNorms and the
    embeddings are left whole, as usual: they are few, so zeroing them would save little.
    """
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0 <= amount < 1:
        raise CourseError(
            f"amount={amount!r} is the fraction of the weights to prune, expected a number in "
            f"[0, 1): 0.5 prunes half of them"
        )
    if scope not in SCOPES:
        raise CourseError(
            f"scope={scope!r}, expected 'layer' (each matrix loses the same fraction) or "
            f"'global' (the smallest weights of all the matrices together)"
        )
    weights = {
        f"{name}.weight": layer.weight.detach()
        for name, layer in _projections(model, "magnitude pruning")
    }
    if scope == "layer":
        return {
            name: _smallest_out(w.abs(), round(amount * w.numel())) for name, w in weights.items()
        }
    scores = torch.cat([w.abs().flatten() for w in weights.values()])  # in the order of names
    sizes = [w.numel() for w in weights.values()]
    kept = _smallest_out(scores, round(amount * scores.numel())).split(sizes)
    return {name: m.view_as(w) for (name, w), m in zip(weights.items(), kept)}


def _keep_zeros(weight: nn.Parameter) -> None:
    """From now on, the gradient of ``weight`` is 0 wherever the weight is 0 (once per weight).

    The hook reads the weight when the gradient arrives, not a mask saved now, so it follows
    whatever weights are loaded into the parameter later (a checkpoint's, after the replay)."""
    if getattr(weight, "keeps_zeros", False):
        return
    requires_grad = weight.requires_grad
    weight.requires_grad_(True)  # a hook needs it; a frozen weight keeps its hook for later
    weight.register_hook(lambda grad: grad * (weight != 0))
    weight.requires_grad_(requires_grad)
    weight.keeps_zeros = True  # type: ignore[attr-defined]


@keeps_shapes  # zeros are weights like any other: to_hf converts a pruned model
@change("prune_magnitude")
def prune_magnitude(model: GPT, amount: float, scope: str = "layer") -> GPT:
    """Set the weights that ``magnitude_masks(model, amount, scope)`` drops to 0, and keep them
    at 0 through later training. Changed in place; returned.

    Each pruned weight gets a gradient hook: grad * (weight != 0). With zero gradients, Adam's
    moments stay 0, so its update is 0 / (0 + eps) = 0, and AdamW's decoupled weight decay
    shrinks 0 to 0: the zeros stay exactly 0. Build the optimizer after pruning (its moments
    from before would move them). amount counts the zeros already there: 0.5 after 0.3 leaves
    half of the weights at 0. A weight that training itself drove to exactly 0 stays there too.
    """
    masks = magnitude_masks(model, amount, scope)
    with torch.no_grad():
        for name, mask in masks.items():
            weight = model.get_parameter(name)
            weight.masked_fill_(~mask, 0.0)  # +0.0, where weight * mask would leave -0.0
            _keep_zeros(weight)
    return model


def sparsity(model: GPT) -> float:
    """The fraction of the blocks' projection weights that are exactly 0 (biases, LayerNorms
    and embeddings left out, as magnitude pruning leaves them)."""
    weights = [layer.weight for _, layer in _projections(model, "sparsity")]
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / sum(w.numel() for w in weights)


# ---------------------------------------------------------------------------------------------
# Structured: how much each head and hidden unit matters


def _unit_importance(model: GPT, batches: Iterable[tuple[Tensor, Tensor]], part: str) -> Tensor:
    """What head_importance (part="attn") and neuron_importance (part="mlp") share.

    A gate per unit, all 1.0, multiplies the units' outputs where they enter ``<part>.c_proj``:
    its input (B, T, n_units * width) is viewed as (B, T, n_units, width), width = head_dim for
    heads and 1 for hidden units. The gates change nothing in the forward pass; their gradients
    say how the loss would change if a unit's output were scaled. Only the gates get gradients.
    """
    blocks = list(model.transformer.h)
    if part == "attn":
        widths = [(block.attn.n_head, block.attn.head_dim) for block in blocks]
    else:
        widths = [(block.mlp.c_proj.in_features, 1) for block in blocks]
    weight = blocks[0].ln_1.weight
    gates = [
        torch.ones(n, device=weight.device, dtype=weight.dtype, requires_grad=True)
        for n, _ in widths
    ]

    def gate_hook(gate: Tensor, width: int):
        def hook(module: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
            x = args[0].unflatten(-1, (-1, width))  # (B, T, n_units, width)
            return ((x * gate[:, None]).flatten(-2), *args[1:])

        return hook

    handles = [
        getattr(block, part).c_proj.register_forward_pre_hook(gate_hook(gate, width))
        for block, gate, (_, width) in zip(blocks, gates, widths)
    ]
    params = list(model.parameters())
    requires_grad, training = [p.requires_grad for p in params], model.training
    scores = [torch.zeros(n, device=weight.device) for n, _ in widths]
    n_batches = 0
    try:
        model.eval()  # no dropout: the gradient of the model as it will be used
        model.requires_grad_(False)  # the backward pass then reaches only the gates
        with torch.enable_grad():
            for x, y in batches:
                grads = torch.autograd.grad(model(x, y).loss, gates)
                for score, grad in zip(scores, grads):
                    score += grad.abs().float()
                n_batches += 1
    finally:
        for handle in handles:
            handle.remove()
        for p, flag in zip(params, requires_grad):
            p.requires_grad_(flag)
        model.train(training)
    if not n_batches:
        raise CourseError("batches is empty: give at least one (x, y) batch of token ids")
    # Normalised per layer (L2), as Michel et al. do, so that layers compare. A layer narrower
    # than the widest (units pruned before) is padded with NaN: no such unit.
    out = torch.full((len(blocks), max(n for n, _ in widths)), float("nan"), device=weight.device)
    for i, score in enumerate(scores):
        out[i, : score.numel()] = score / score.norm().clamp(min=torch.finfo(score.dtype).tiny)
    return out


def head_importance(model: GPT, batches: Iterable[tuple[Tensor, Tensor]]) -> Tensor:
    """Each head's importance, (n_layer, n_head): the sum over ``batches`` of (x, y) token ids
    (B, T) of |d loss / d gate|, a gate of 1.0 on the head's output, each layer then divided by
    its L2 norm (Michel, Levy & Neubig, 2019). Near 0: the loss hardly notices the head.

    The paper takes |.| of each example's gradient, this of each batch's (cheaper; the same
    with batches of one sequence). The model is measured in eval mode and left as it was
    (mode, requires_grad, no .grad).
    After prune_heads, a layer with fewer heads than the widest is padded with NaN.
    """
    return _unit_importance(model, batches, "attn")


def neuron_importance(model: GPT, batches: Iterable[tuple[Tensor, Tensor]]) -> Tensor:
    """Each MLP hidden unit's importance, (n_layer, d_ff), d_ff = 4 * n_embd: the same as
    ``head_importance``, with a gate on each unit's GELU output (the input of mlp.c_proj)."""
    return _unit_importance(model, batches, "mlp")


def least_important(importance: Tensor, count: int) -> dict[int, list[int]]:
    """The ``count`` lowest entries of ``importance`` (n_layer, n_units), over all layers at
    once, as {layer: sorted unit indices} (layers losing none left out): what prune_heads and
    prune_neurons take. A unit whose removal would empty its layer is passed over for the next
    lowest; NaN entries (no such unit) are never taken. Ties go to the lower layer, then unit.
    """
    if importance.dim() != 2:
        raise CourseError(
            f"importance must be (n_layer, n_units), as head_importance returns, got shape "
            f"{tuple(importance.shape)}"
        )
    sizes = (~importance.isnan()).sum(dim=1).tolist()  # units per layer
    most = sum(sizes) - len(sizes)
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= most:
        raise CourseError(
            f"count={count!r}, expected an integer in [0, {most}]: each of the {len(sizes)} "
            f"layers keeps at least one of its units"
        )
    chosen: dict[int, list[int]] = {}
    taken, n_units = 0, importance.size(1)
    for i in importance.detach().flatten().cpu().argsort(stable=True).tolist():  # NaN last
        if taken == count:
            break
        layer, unit = divmod(i, n_units)
        if len(chosen.get(layer, [])) < sizes[layer] - 1:
            chosen.setdefault(layer, []).append(unit)
            taken += 1
    return {layer: sorted(units) for layer, units in sorted(chosen.items())}


def random_units(
    shape: tuple[int, int], count: int, generator: torch.Generator | None = None
) -> dict[int, list[int]]:
    """``count`` units of a (n_layer, n_units) model drawn at random, as {layer: sorted units},
    never a whole layer: the baseline importance has to beat. It ranks random scores the way
    ``least_important`` ranks importance, so every unit has the same chance."""
    if len(shape) != 2 or not all(isinstance(n, int) and n > 0 for n in shape):
        raise CourseError(f"shape must be (n_layer, n_units), two positive integers, got {shape}")
    return least_important(torch.rand(shape, generator=generator), count)


# ---------------------------------------------------------------------------------------------
# Structured: removing heads and hidden units


def _check_units(
    units: dict, sizes: list[int], kind: str, fn: str, hint: str
) -> dict[int, list[int]]:
    """``units`` {layer: [index, ...]} (int keys, lists or tuples of indices), checked against
    ``sizes`` (units per layer now) and returned with lists."""
    if not isinstance(units, dict):
        raise CourseError(
            f"{kind}s must be a dict {{layer: [{kind}, ...]}}, e.g. {{0: [1, 3]}}, got "
            f"{type(units).__name__}"
        )
    checked: dict[int, list[int]] = {}
    n_layer = len(sizes)
    for layer, indices in units.items():
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise CourseError(f"{layer!r} is not a layer number: use {{0: [1, 3]}} (int keys)")
        if not 0 <= layer < n_layer:
            raise CourseError(
                f"layer {layer} is out of range: the model has {n_layer} layers, 0 .. {n_layer - 1}"
            )
        if not isinstance(indices, (list, tuple)) or not all(
            isinstance(j, int) and not isinstance(j, bool) for j in indices
        ):
            raise CourseError(
                f"the {kind}s of layer {layer} must be a list of integers, got {indices!r}"
            )
        n = sizes[layer]
        for j in indices:
            if not 0 <= j < n:
                raise CourseError(
                    f"{kind} {j} of layer {layer} is out of range: the layer has {n} {kind}s now, "
                    f"0 .. {n - 1}. Indices count the {kind}s a layer has now, after any earlier "
                    f"{fn}: {hint}"
                )
        if len(set(indices)) != len(indices):
            twice = next(j for j in indices if indices.count(j) > 1)
            raise CourseError(f"{kind} {twice} is listed twice for layer {layer}: list each once")
        if len(indices) == n:
            raise CourseError(
                f"{fn} would remove all {n} {kind}s of layer {layer}: keep at least one {kind} "
                f"in layer {layer} (remove at most {n - 1}), or remove the layer"
            )
        checked[layer] = list(indices)
    return checked


@torch.no_grad()
def _narrow(linear: nn.Linear, rows: Tensor | None = None, cols: Tensor | None = None) -> None:
    """Keep only ``rows`` (outputs, with their bias entries) or ``cols`` (inputs) of
    ``linear``, in place; the weight's zero-keeping hook, if it had one, comes along."""
    weight, bias = linear.weight, linear.bias
    if rows is not None:
        weight, bias = weight[rows], None if bias is None else bias[rows]
    if cols is not None:
        weight = weight[:, cols]
    old = linear.weight
    linear.weight = nn.Parameter(weight.clone(), requires_grad=old.requires_grad)
    if getattr(old, "keeps_zeros", False):
        _keep_zeros(linear.weight)
    if bias is not None:
        linear.bias = nn.Parameter(bias.clone(), requires_grad=linear.bias.requires_grad)
    linear.out_features, linear.in_features = linear.weight.shape


@change("prune_heads")
def prune_heads(model: GPT, heads: dict[int, list[int]]) -> GPT:
    """Remove attention heads: ``heads`` {layer: [head, ...]} (e.g. from least_important).

    The layer's c_attn loses the head's q, k and v rows (and bias entries), its c_proj the
    head's input columns; attn.n_head drops and head_dim stays, so n_head * head_dim < n_embd.
    Head indices count the heads a layer has *now*: after ``prune_heads(model, {0: [0]})``
    the old head 1 of layer 0 is head 0. Changed in place; returned. Build the optimizer
    afterwards (the parameters are new).
    """
    _projections(model, "prune_heads")
    blocks = model.transformer.h
    sizes = [block.attn.n_head for block in blocks]
    hint = "head_importance(model, batches) measures the heads there are now"
    for layer, removed in _check_units(heads, sizes, "head", "prune_heads", hint).items():
        attn = blocks[layer].attn
        n, hd = attn.n_head, attn.head_dim
        kept = sorted(set(range(n)) - set(removed))
        cols = torch.arange(n * hd).view(n, hd)[kept].flatten()  # the kept heads' channels
        _narrow(attn.c_attn, rows=torch.cat([cols + part * n * hd for part in range(3)]))  # q|k|v
        _narrow(attn.c_proj, cols=cols)
        attn.n_head = len(kept)
    return model


@change("prune_neurons")
def prune_neurons(model: GPT, neurons: dict[int, list[int]]) -> GPT:
    """Remove MLP hidden units: ``neurons`` {layer: [unit, ...]} (e.g. from least_important
    on neuron_importance). The layer's c_fc loses those rows (and bias entries), its c_proj
    those input columns. Indices count the units a layer has now. Changed in place; returned.
    """
    _projections(model, "prune_neurons")
    blocks = model.transformer.h
    sizes = [block.mlp.c_fc.out_features for block in blocks]
    hint = "neuron_importance(model, batches) measures the units there are now"
    for layer, removed in _check_units(neurons, sizes, "neuron", "prune_neurons", hint).items():
        mlp = blocks[layer].mlp
        kept = torch.tensor(sorted(set(range(mlp.c_fc.out_features)) - set(removed)))
        _narrow(mlp.c_fc, rows=kept)
        _narrow(mlp.c_proj, cols=kept)
    return model
