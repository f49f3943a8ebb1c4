"""Checkers for the exercises of Lesson 05 (notebooks/05_pretraining.ipynb).

The right answers come from PyTorch: one step on the whole batch for gradient accumulation,
``F.cross_entropy`` for the loss. Each typical mistake is a small function (or, for the
accumulation loop, one line of it) beside the message that names it.
"""

from __future__ import annotations

import copy
import itertools
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from course_lib.data import get_batch
from course_lib.exercises import (
    Feedback,
    NotAttempted,
    call_on_copies,
    checker,
    describe,
    expect_tensor,
    named_mistake,
    same,
)
from course_lib.model import GPT, GPTConfig

# --- Exercise 1: debug this gradient accumulation ---------------------------------------------

_MICRO = 4  # micro-batches of 2 windows, in batches of 8


def _tiny() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=32))


def _batches() -> list[tuple[Tensor, Tensor]]:
    """Two batches (x, y) of 8 windows of a random token stream: two updates in a row."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(64, (1000,), generator=g)
    return [get_batch(tokens, 8, 16, g) for _ in range(2)]


def _grads(model: nn.Module) -> Tensor:
    """Every parameter's gradient, one flat vector (0 where there is none)."""
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                      for p in model.parameters()])  # fmt: skip


def _clipped(g: Tensor, max_norm: float) -> Tensor:
    """The gradient ``g`` (a flat vector) as torch's clipping leaves it."""
    p = torch.zeros_like(g, requires_grad=True)
    p.grad = g.clone()
    torch.nn.utils.clip_grad_norm_([p], max_norm)
    return p.grad


def _whole_batch(model: nn.Module, x: Tensor, y: Tensor, clip: float) -> tuple[Tensor, float]:
    """The clipped gradient and the loss of one step on the whole batch: the right answer."""
    net = copy.deepcopy(model)
    net.zero_grad(set_to_none=True)
    loss = net(x, y).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
    return _grads(net), loss.item()


def _per_micro_batch(model: nn.Module, x: Tensor, y: Tensor) -> tuple[list[Tensor], list[float]]:
    """Each micro-batch's own gradient and loss (its mean over its tokens)."""
    net, grads, losses = copy.deepcopy(model), [], []
    for xm, ym in zip(x.chunk(_MICRO), y.chunk(_MICRO)):
        net.zero_grad(set_to_none=True)
        loss = net(xm, ym).loss
        loss.backward()
        grads.append(_grads(net))
        losses.append(loss.item())
    return grads, losses


class _Update(NamedTuple):
    at_steps: list[Tensor]  # the gradients each time the optimizer stepped during the call
    before: Tensor  # the gradients before the call
    grads: list[Tensor]  # each micro-batch's own gradient
    losses: list[float]  # and loss
    want: Tensor  # the clipped gradient of one step on the whole batch
    want_loss: float  # and its loss
    returned: object  # what the learner's function returned
    clip: float


def _two_updates(fn, clip: float) -> list[_Update]:
    """Two updates in a row by ``fn`` on a fresh model (SGD, so every step counts alike)."""
    model = _tiny()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    at_steps: list[Tensor] = []
    optimizer.register_step_pre_hook(lambda *_: at_steps.append(_grads(model)))
    updates = []
    for x, y in _batches():
        before, n = _grads(model), len(at_steps)
        grads, losses = _per_micro_batch(model, x, y)
        want, want_loss = _whole_batch(model, x, y, clip)
        returned = call_on_copies(fn, model, optimizer, x, y, _MICRO, clip)
        updates.append(
            _Update(at_steps[n:], before, grads, losses, want, want_loss, returned, clip)
        )
    return updates


# Each bug is one line of the loop: what it leaves in the gradients when the optimizer steps,
# given each micro-batch's gradient, what the gradients held before the call, and grad_clip.
def _at_the_step(grads: list[Tensor], before: Tensor, clip: float, bugs: tuple[str, ...]) -> Tensor:
    total = before if "stale" in bugs else torch.zeros_like(before)
    for g in grads:
        if "zero_each" in bugs:
            total = torch.zeros_like(total)
        total = total + (g if "undivided" in bugs else g / len(grads))
        if "clip_each" in bugs:
            total = _clipped(total, clip)
    return total if "unclipped" in bugs else _clipped(total, clip)


_BUGS = {  # the three bugs of the function as given
    "stale": "nothing empties the gradients between updates: the last batch's are still there, "
    "and this batch's add to them. Empty them once per update, before the first micro-batch "
    "(or after the step)",
    "undivided": "each micro-batch adds the gradient of its own mean loss, so their sum is "
    "micro_batches times the gradient of the batch's mean loss: divide each micro-batch's loss "
    "by their number",
    "clip_each": "the gradient is clipped after each micro-batch, while it is still a partial "
    "sum: clip once, the whole batch's gradient, just before the step",
}
_WRONG_FIXES = {
    "zero_each": "the gradients are emptied inside the loop: each micro-batch wipes out the ones "
    "before it, and only the last one's reaches the update",
    "unclipped": "the gradient is no longer clipped: clip the whole batch's gradient to "
    "grad_clip, once, before the step",
}
_LOSS_MISTAKES = {
    lambda losses: sum(losses): "the loss it returns is the sum of the micro-batches' mean "
    "losses, micro_batches times the batch's: return their mean",
    lambda losses: losses[-1]: "the loss it returns is the last micro-batch's only: return the "
    "mean over the whole batch",
    lambda losses: sum(losses) / len(losses) ** 2: "the loss it returns is divided by the number "
    "of micro-batches twice",
}


def _bugs_that_fit(updates: list[_Update]) -> tuple[str, ...] | None:
    """The fewest bugs and wrong fixes that give the gradient at every update, or None."""
    names = (*_BUGS, *_WRONG_FIXES)
    for n in range(len(names) + 1):
        for bugs in itertools.combinations(names, n):
            if all(_close(u.at_steps[0], _at_the_step(u.grads, u.before, u.clip, bugs))
                   for u in updates):  # fmt: skip
                return bugs
    return None


def _close(got: Tensor, want: Tensor) -> bool:
    return bool((got - want).norm() <= 1e-4 * want.norm() + 1e-9)


def _returned_loss(got: object, losses: list[float], want: float) -> str | None:
    """What is wrong with the loss the function returned (None: the batch's mean loss)."""
    if isinstance(got, Tensor) and got.numel() == 1:
        got = got.item()
    if isinstance(got, bool) or not isinstance(got, int | float):
        return f"return the batch's mean loss, a float, got {describe(got)}"
    if same(float(got), want, atol=1e-4):
        return None
    mistake = named_mistake(float(got), _LOSS_MISTAKES, losses, atol=1e-4)
    return mistake or f"the batch's mean loss is {want:.4f}, your function returned {got:.4f}"


@checker(
    "accumulated_step",
    "This is the function as given, with its three bugs. Follow one weight's gradient through "
    "a call, and through two calls in a row: what does it hold when the optimizer steps, and "
    "what should it hold? (The gradient of the whole batch's mean loss, clipped.)",
    "Three changes: optimizer.zero_grad() once, before the loop (not inside it); "
    "(loss / micro_batches).backward(); and clip_grad_norm_ once, after the loop, just before "
    "optimizer.step().",
)
def check_accumulated_step(fn) -> str | None:
    """Check ``fn(model, optimizer, x, y, micro_batches, grad_clip) -> float``: one update from
    the batch (x, y) read in micro-batches, the learner's repair of a function with three bugs
    (the gradients never emptied, the losses not divided, the partial sums clipped). Two updates
    in a row, with the clipping out of play and in play, each compared with one step on the
    whole batch; then the experiment: which optimizer shows the undivided loss."""
    updates = [u for clip in (math.inf, 0.05) for u in _two_updates(fn, clip)]
    for u in updates:
        if len(u.at_steps) != 1:
            raise Feedback(
                f"the optimizer stepped {len(u.at_steps)} times for one batch: step once, after "
                f"every micro-batch has added its gradient"
            )
    if all(
        _close(u.at_steps[0], _at_the_step(u.grads, u.before, u.clip, tuple(_BUGS)))
        and same(u.returned, sum(u.losses), atol=1e-4)
        for u in updates
    ):
        raise NotAttempted
    bugs = _bugs_that_fit(updates)
    if bugs:
        return "; and ".join({**_BUGS, **_WRONG_FIXES}[b] for b in bugs)
    for u in updates:
        got = u.at_steps[0]
        if not _close(got, u.want):
            return (
                f"the gradient at the step is off that of one step on the whole batch by "
                f"{(got - u.want).norm() / u.want.norm():.0%} of its length (grad_clip = {u.clip})"
            )
        problem = _returned_loss(u.returned, u.losses, u.want_loss)
        if problem:
            return problem
    print(_experiment(fn))
    return None


class _Undivided(nn.Module):
    """A model whose loss is micro_batches times its own: a correct accumulation run on it takes
    the step of a loss not divided."""

    def __init__(self, model: GPT) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, y: Tensor):
        out = self.model(x, y)
        return out._replace(loss=out.loss * _MICRO)


def _experiment(fn) -> str:
    """How far the step of a loss not divided lands from the right one, for two optimizers."""
    (x, y), _ = _batches()
    off = {}
    for name, make, clip in [
        ("AdamW, clipped at 1.0 (the course's)", lambda m: torch.optim.AdamW(m.parameters()), 1.0),
        ("SGD, not clipped", lambda m: torch.optim.SGD(m.parameters(), lr=0.1), math.inf),
    ]:
        moved = []
        for wrap in (lambda m: m, _Undivided):
            model = _tiny()
            start = torch.cat([p.detach().flatten() for p in model.parameters()])
            fn(wrap(model), make(model), x.clone(), y.clone(), _MICRO, clip)
            moved.append(torch.cat([p.detach().flatten() for p in model.parameters()]) - start)
        off[name] = ((moved[1] - moved[0]).norm() / moved[0].norm()).item()
    adamw, sgd = off.values()
    if not (adamw < 1e-3 and abs(sgd - (_MICRO - 1)) < 1e-3):
        raise Feedback("the experiment did not come out as expected: please report a course bug")
    return (
        f"the step of a loss not divided by the {_MICRO} micro-batches, off the right one by "
        + ", ".join(f"{v:.1%} with {k}" for k, v in off.items())
        + ". Clipping scales any gradient longer than the limit down to it, and AdamW divides "
        "each step by the gradient's own running size: both undo a constant factor. The bug "
        "hides from the weights, and shows in the loss you log."
    )


# --- Exercise 2: the loss of a batch -----------------------------------------------------------


def _nll(logits: Tensor, targets: Tensor) -> Tensor:
    """(B, T): each position's loss, -log p(target), from torch's own cross-entropy."""
    return F.cross_entropy(logits.double().transpose(1, 2), targets, reduction="none")


_LOSS_OF_BATCH_MISTAKES = {
    lambda lg, t: _nll(lg, t).sum(): "that is the sum over the tokens: take the mean, so the "
    "loss is per token and does not grow with the batch",
    lambda lg, t: _nll(lg, t).sum(-1).mean(): "that is the sum over each sequence, averaged over "
    "the batch: average over all B * T tokens",
    lambda lg, t: _nll(lg, t).mean() / math.log(2): "that is in bits (log2): the loss is in "
    "nats, with the natural log",
    lambda lg, t: -lg.double().gather(-1, t[..., None]).mean(): "that is minus the raw logit "
    "at the target: turn the scores into log-probabilities first",
    lambda lg, t: -(-_nll(lg, t)).exp().mean(): "that uses the probability of the target, not "
    "its log-probability: the loss is -log p(target)",
    lambda lg, t: (-_nll(lg, t)).exp().mean(): "that uses the probability of the target, not "
    "its log-probability: the loss is -log p(target)",
    lambda lg, t: -_nll(lg, t).mean(): "the minus sign is missing: that is the mean "
    "log-likelihood (negative); the loss is its negative, -log p(target)",
    lambda lg, t: _nll(lg, lg.argmax(-1)).mean(): "that is the loss of the model's most likely "
    "token (the argmax), not of the target",
    lambda lg, t: _nll(lg[:, :-1], t[:, 1:]).mean(): "the targets are shifted again: the "
    "batch's y is already x shifted by one, so position t is scored against targets[:, t]",
}
_OVERFLOW = (
    "for logits of size about 100, a model that is very sure, your loss is {got}: in float32, "
    "e^x overflows to inf beyond x = 88, and a probability below 1e-45 becomes 0, whose log is "
    "-inf. Compute the log-probabilities from the logits directly, after subtracting each "
    "row's largest logit, never the probabilities first"
)


@checker(
    "batch_loss",
    "At each position, the loss is minus the log of the probability the model gave the true "
    "next token; average it over every position of the batch. The checker also tries a model "
    "that is very sure of itself, with logits of size 100.",
    "Take log_softmax(logits, dim=-1) (it subtracts the largest logit for you), pick each "
    "token's target with .gather(-1, targets.unsqueeze(-1)), and return minus the mean.",
)
def check_batch_loss(fn) -> str | None:
    """Check ``fn(logits (B, T, V), targets (B, T)) -> scalar``: the mean cross-entropy in
    nats, against ``F.cross_entropy``, also for the large logits of a model that is very sure."""
    for seed, (B, T, V, scale) in enumerate([(2, 3, 5, 2), (4, 7, 11, 2), (3, 5, 11, 100)]):
        g = torch.Generator().manual_seed(seed)
        logits = torch.randn(B, T, V, generator=g) * scale
        targets = torch.randint(V, (B, T), generator=g)
        where = f"(for logits {(B, T, V)}{' of size about 100' if scale > 2 else ''})"
        want = F.cross_entropy(logits.view(-1, V), targets.view(-1)).double()
        got = call_on_copies(fn, logits, targets)
        if isinstance(got, Tensor) and got.shape in [(B, T), (B * T,)]:
            return (
                f"that is the loss of every token, shape {tuple(got.shape)}: take the mean over "
                f"all B * T = {B * T} tokens, one number, a 0-d tensor (shape ())"
            )
        if isinstance(got, int | float) and not isinstance(got, bool):
            got = torch.tensor(float(got))
        got = expect_tensor(got, (), f"one number, the mean loss {where}").detach().double()
        if not torch.isfinite(got):
            return _OVERFLOW.format(got=got.item())
        if not same(got, want, atol=1e-4):
            mistake = named_mistake(got, _LOSS_OF_BATCH_MISTAKES, logits, targets, atol=1e-4)
            wrong = f"the loss is {want:.5f} nats per token"
            return f"{mistake or wrong} {where}: expected {want:.5f}, got {got:.5f}"
    return None


# --- Exercise 3: dropout, an experiment --------------------------------------------------------


def _dropout_problem(x: Tensor, out: Tensor, p: float) -> str | None:
    """What is wrong with ``out``, the learner's dropout of ``x`` at rate ``p`` (None: right)."""
    zeroed = out == 0
    survivors = out[~zeroed] / x[~zeroed]  # x has no zeros: each survivor is x * scale
    if not same(survivors, torch.ones_like(survivors)) and not same(
        survivors, torch.full_like(survivors, 1 / (1 - p))
    ):
        if same(survivors, torch.full_like(survivors, 1 - p)):
            return (
                f"the survivors are multiplied by 1 - p = {1 - p:g}: that is what the original "
                "dropout did at evaluation; here they are divided by 1 - p"
            )
        return f"every element must be either 0 or x / (1 - p), at p = {p:g}"
    rate = zeroed.float().mean().item()
    if abs(rate - (1 - p)) < 0.02 and abs(p - 0.5) > 0.1:
        return (
            f"{rate:.0%} of the elements are zeroed at p = {p:g}: p is the probability of "
            "dropping an element, not of keeping it"
        )
    if abs(rate - p) > 0.02:
        return f"{rate:.1%} of the elements are zeroed at p = {p:g}: expected about {p:.0%}"
    if p > 0 and same(survivors, torch.ones_like(survivors)):
        return (
            "the survivors are not rescaled: divide them by 1 - p, so that each element's "
            f"average over many masks stays what it was (here it would shrink to {1 - p:g} x)"
        )
    return None


@checker(
    "dropout",
    "Zero each element at random with probability p, and rescale the ones that survive so that "
    "every element keeps, on average, its value.",
    "keep = torch.rand(x.shape, generator=generator) >= p is True with probability 1 - p; the "
    "survivors are divided by 1 - p.",
)
def check_dropout(fn) -> str | None:
    """Check ``fn(x, p, generator) -> Tensor``: inverted dropout in training mode. Then the
    experiment: averaged over many masks the output is x again, which is why evaluation can
    switch dropout off and change nothing on average."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(200, 500, generator=g) + 0.5  # no zeros, so a zero in the output is a drop
    for p in (0.1, 0.3, 0.6):
        out = call_on_copies(fn, x, p, torch.Generator().manual_seed(1))
        problem = _dropout_problem(x, expect_tensor(out, x.shape, "x, dropped out"), p)
        if problem:
            return problem
    if not torch.equal(call_on_copies(fn, x, 0.0, torch.Generator().manual_seed(1)), x):
        return "at p = 0 nothing is dropped: the output must equal x"
    one = x[0, :5]  # the experiment: five elements, each through 20,000 masks at p = 0.3
    draws = torch.stack(
        [call_on_copies(fn, one, 0.3, torch.Generator().manual_seed(s)) for s in range(20_000)]
    )
    mean = draws.mean(0)
    print(f"x = {one.numpy().round(3)}\nmean over 20,000 masks at p = 0.3: {mean.numpy().round(3)}")
    if not torch.allclose(mean, one, rtol=0.03):
        return "averaged over many masks the output should be x itself: is the rescaling right?"
    return None
