"""Checkers for the exercises of Lesson 05 (notebooks/05_pretraining.ipynb)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from course_lib.exercises import call, checker
from course_lib.optim import lr_at

# (max_lr, min_lr, warmup_steps, max_steps), each checked at every step from 0 to past the end:
# the first warm-up step, the peak, the cosine, and training on after max_steps.
_SCHEDULES = [
    (1.0, 0.1, 4, 12),
    (6e-4, 6e-5, 10, 100),
    (3e-4, 3e-5, 0, 50),  # no warm-up: step 0 starts at max_lr
    (1e-3, 0.0, 1, 7),  # one warm-up step, a floor of 0
]


def _same(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _decay(step: int, max_lr: float, min_lr: float, warmup: int, max_steps: int,
           from_zero: bool = False, floor: bool = True, cosine: bool = True) -> float:  # fmt: skip
    """The decay part of the schedule, right or with the typical mistakes switched on."""
    p = step / max_steps if from_zero else (step - warmup) / (max_steps - warmup)
    low = min_lr if floor else 0.0
    shape = 0.5 * (1.0 + math.cos(math.pi * p)) if cosine else 1.0 - p
    return low + (max_lr - low) * shape


_WARMUP_FROM_ZERO = (
    "the warm-up starts at 0: step 0 already updates the weights, so an lr of 0 wastes it; use "
    "max_lr * (step + 1) / warmup_steps, which starts at max_lr / warmup_steps and reaches max_lr "
    "at step warmup_steps - 1"
)
_NO_WARMUP = (
    "the warm-up is missing: for step < warmup_steps the rate climbs linearly, "
    "max_lr * (step + 1) / warmup_steps, before the cosine starts"
)
_DECAY_MISTAKES = {
    "from_zero": (
        "the cosine's progress is measured from step 0: measure it from the end of the warm-up, "
        "p = (step - warmup_steps) / (max_steps - warmup_steps), so the decay starts at max_lr "
        "right after the warm-up"
    ),
    "floor": (
        "it decays to 0 instead of min_lr: lr = min_lr + (max_lr - min_lr) * (1 + cos(pi * p)) / 2 "
        "ends at min_lr"
    ),
    "cosine": (
        "that decay is linear: use half a cosine, (1 + cos(pi * p)) / 2, which falls from 1 to 0 "
        "as p goes from 0 to 1, slowly at both ends"
    ),
}


def _warmup_problem(steps, got, max_lr, min_lr, warmup, max_steps) -> str | None:
    """Name the mistake in the warm-up steps ``steps`` (``got``: the learner's rates there)."""

    def like(wrong: Callable[[int], float]) -> bool:
        return all(_same(g, wrong(s)) for s, g in zip(steps, got))

    if like(lambda s: max_lr * s / warmup):
        return _WARMUP_FROM_ZERO
    forgot = [
        lambda s: max_lr,
        lambda s: _decay(s, max_lr, min_lr, warmup, max_steps, from_zero=True),
        lambda s: _decay(s, max_lr, min_lr, warmup, max_steps),  # p < 0: cos(pi * p) < 1
    ]
    if any(like(wrong) for wrong in forgot):
        return _NO_WARMUP
    return None


def _decay_problem(steps, got, max_lr, min_lr, warmup, max_steps) -> str | None:
    """Name the mistakes in the decay steps ``steps`` (any mix of the three typical ones)."""
    for from_zero in (False, True):
        for floor in (True, False):
            for cosine in (True, False):
                if all(
                    _same(g, _decay(s, max_lr, min_lr, warmup, max_steps, from_zero, floor, cosine))
                    for s, g in zip(steps, got)
                ):
                    wrong = {"from_zero": from_zero, "floor": not floor, "cosine": not cosine}
                    named = [_DECAY_MISTAKES[k] for k, on in wrong.items() if on]
                    if named:
                        return "; and ".join(named)
    return None


def _after_problem(got: float, min_lr: float) -> str:
    """What is wrong with a rate ``got`` (not min_lr) after max_steps."""
    if got == 0.0:
        return "after max_steps the rate stays at min_lr, it does not drop to 0"
    if got > min_lr:
        return (
            "after max_steps the rate must stay flat at min_lr, but yours rises again (the cosine "
            "turns back up once p passes 1): return min_lr for step >= max_steps"
        )
    return (
        "after max_steps the rate must stay flat at min_lr, but yours goes below it: "
        "return min_lr for step >= max_steps"
    )


_LR_HINT = (
    "Three cases: step < warmup_steps climbs linearly to max_lr (max_lr / warmup_steps at step 0); "
    "step >= max_steps stays at min_lr; in between, half a cosine from max_lr down to min_lr with "
    "p = (step - warmup_steps) / (max_steps - warmup_steps)."
)


@checker("lr_schedule", _LR_HINT)
def check_lr_schedule(fn) -> str | None:
    """Check ``fn(step, max_lr, min_lr, warmup_steps, max_steps) -> float``: ``train.lr_at``."""
    for max_lr, min_lr, warmup, max_steps in _SCHEDULES:
        args = (max_lr, min_lr, warmup, max_steps)
        where = f"max_lr={max_lr}, min_lr={min_lr}, warmup_steps={warmup}, max_steps={max_steps}"
        steps = range(max_steps + max_steps // 2 + 3)
        got = []
        for step in steps:
            try:
                lr = call(fn, step, *args)
            except ZeroDivisionError:
                if warmup == 0:
                    return (
                        f"for {where} your function divided by zero: with no warm-up there is "
                        "nothing to climb and step 0 starts the cosine at max_lr "
                        "(the warm-up branch is for step < warmup_steps only)"
                    )
                raise
            if isinstance(lr, torch.Tensor):
                return "return a float (use math.cos, not torch.cos), got a Tensor"
            if isinstance(lr, bool) or not isinstance(lr, float | int):
                return f"return a float, got {type(lr).__name__}"
            got.append(float(lr))
        want = [lr_at(s, *args) for s in steps]
        bad = next((s for s in steps if not _same(got[s], want[s])), None)
        if bad is None:
            continue
        what = ""
        if bad == 0 and warmup > 0:
            what = ", the first warm-up step"
        elif bad == warmup - 1:
            what = ", the last warm-up step (the peak)"
        elif bad == warmup:
            what = ", the first step of the cosine"
        elif bad >= max_steps:
            what = ", once step >= max_steps"
        if bad < warmup:
            part = list(range(warmup))
            problem = _warmup_problem(part, [got[s] for s in part], *args)
        elif bad < max_steps:
            part = list(range(warmup, max_steps))
            problem = _decay_problem(part, [got[s] for s in part], *args)
        else:
            problem = _after_problem(got[bad], min_lr)
        numbers = f"expected {want[bad]:.6g}, got {got[bad]:.6g}"
        if problem:
            return f"{problem} (for {where}, at step {bad}{what}: {numbers})"
        return f"for {where}, at step {bad}{what}: {numbers}"
    return None


def _batch(seed: int, B: int, T: int, V: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, V, generator=g) * 2, torch.randint(0, V, (B, T), generator=g)


def _loss_mistakes(logits: torch.Tensor, targets: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """The typical wrong losses for one batch, each with what went wrong."""
    x = logits.double()
    at = targets.unsqueeze(-1)
    logp = x.log_softmax(-1)
    nll = -logp.gather(-1, at).squeeze(-1)  # (B, T)
    shifted = -logp[:, :-1].gather(-1, targets[:, 1:].unsqueeze(-1))
    prob = x.softmax(-1).gather(-1, at)
    n = targets.numel()
    not_prob = (
        "that uses the probability of the target, not its log-probability: the loss is "
        "-log p(target), so take log_softmax, not softmax"
    )
    return [
        (f"that is the sum over the tokens: take the mean, so the loss is per token and does not "
         f"grow with the batch (B * T = {n} tokens here)", nll.sum()),
        ("that is the sum over each sequence, averaged over the batch: average over all B * T "
         "tokens", nll.sum(-1).mean()),
        ("that is in bits (log2): the loss is in nats, with the natural log of log_softmax",
         nll.mean() / math.log(2)),
        ("that is minus the raw logit at the target: normalise first, log_softmax(logits, dim=-1) "
         "turns the scores into log-probabilities", -x.gather(-1, at).mean()),
        (not_prob, -prob.mean()),
        (not_prob, prob.mean()),
        ("the minus sign is missing: that is the mean log-likelihood (negative); the loss is "
         "its negative, -log p(target)", -nll.mean()),
        ("that is the loss of the model's most likely token (the argmax), not of the target: "
         "pick log p at the targets, with gather(-1, targets.unsqueeze(-1))",
         -logp.max(-1).values.mean()),
        ("the targets are shifted again: the batch's y is already x shifted by one, so "
         "logits[:, t] is scored against targets[:, t], not targets[:, t + 1]", shifted.mean()),
    ]  # fmt: skip


_LOSS_HINT = (
    "Take log_softmax(logits, dim=-1), pick each token's target with "
    ".gather(-1, targets.unsqueeze(-1)), and return minus the mean."
)


@checker(
    "batch_loss",
    "At each position, the loss is minus the log of the probability the model gave the true "
    "next token; average it over every position of the batch.",
    _LOSS_HINT,
)
def check_batch_loss(fn) -> str | None:
    """Check ``fn(logits (B, T, V), targets (B, T)) -> scalar``: the mean cross-entropy in nats."""
    for seed, (B, T, V) in enumerate([(2, 3, 5), (4, 7, 11)]):
        logits, targets = _batch(seed, B, T, V)
        want = float(F.cross_entropy(logits.view(-1, V), targets.view(-1)))
        got = call(fn, logits.clone(), targets.clone())
        if isinstance(got, torch.Tensor):
            shape = tuple(got.shape)
            if shape in [(B, T), (B * T,)]:
                return (
                    f"that is the loss of every token, shape {shape}: take the mean over all "
                    f"B * T = {B * T} tokens, so the loss is one number, a 0-d tensor (shape ())"
                )
            if shape != ():
                return (
                    f"for logits {(B, T, V)} return one number, a 0-d tensor (shape ()) or a "
                    f"float, got a tensor of shape {shape}"
                )
            got = float(got.detach())
        elif isinstance(got, bool) or not isinstance(got, float | int):
            return f"return the loss as a 0-d tensor (or a float), got {type(got).__name__}"
        if math.isclose(got, want, rel_tol=0, abs_tol=1e-5):
            continue
        for message, wrong in _loss_mistakes(logits, targets):
            if math.isclose(got, float(wrong), rel_tol=1e-5, abs_tol=1e-5):
                return f"{message} (for logits {(B, T, V)}: expected {want:.5f}, got {got:.5f})"
        return f"for logits {(B, T, V)} the loss is {want:.5f} nats per token, got {got:.5f}"
    return None


def _dropout_problem(x: torch.Tensor, out: object, p: float) -> str | None:
    """What is wrong with ``out``, the learner's dropout of ``x`` at rate ``p`` (None: right)."""
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        return f"return a tensor shaped like x, {tuple(x.shape)}, got {shape}"
    zeroed = out == 0
    survivors = out[~zeroed] / x[~zeroed]  # x has no zeros: each survivor is x * scale
    if not torch.allclose(survivors, torch.ones_like(survivors), rtol=1e-5) and not (
        torch.allclose(survivors, torch.full_like(survivors, 1 / (1 - p)), rtol=1e-5)
    ):
        if torch.allclose(survivors, torch.full_like(survivors, 1 - p), rtol=1e-5):
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
    if p > 0 and torch.allclose(survivors, torch.ones_like(survivors), rtol=1e-5):
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
        original = x.clone()
        out = call(fn, x, p, torch.Generator().manual_seed(1))
        if not torch.equal(x, original):
            return "your function changed x in place: return a new tensor"
        problem = _dropout_problem(x, out, p)
        if problem:
            return problem
    same = call(fn, x, 0.0, torch.Generator().manual_seed(1))
    if not torch.equal(same, x):
        return "at p = 0 nothing is dropped: the output must equal x"
    one = x[0, :5]  # the experiment: five elements, each through 20,000 masks at p = 0.3
    draws = torch.stack(
        [call(fn, one, 0.3, torch.Generator().manual_seed(s)) for s in range(20_000)]
    )
    mean = draws.mean(0)
    print(f"x = {one.numpy().round(3)}\nmean over 20,000 masks at p = 0.3: {mean.numpy().round(3)}")
    if not torch.allclose(mean, one, rtol=0.03):
        return "averaged over many masks the output should be x itself: is the rescaling right?"
    return None
