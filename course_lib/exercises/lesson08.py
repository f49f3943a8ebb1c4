"""Checkers for the exercises of Lesson 08 (compression)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from course_lib.exercises import call, checker

# How much more the three most important heads must cost than the three least important ones,
# in bits per character of the held-out plays (Section 3 measures about 0.1 against 0.02).
IMPORTANT_BPC = 0.03


def _weights() -> list[Tensor]:
    """Matrices on which every mistake shows: rows of different scales, a row with a negative
    extreme, one all-zero row (its scale must not be 0 / 0)."""
    g = torch.Generator().manual_seed(8)
    w = torch.randn(6, 16, generator=g) * torch.tensor([0.02, 0.1, 1.0, 3.0, 0.5, 0.0])[:, None]
    w[1, 3] = -0.9  # the largest |w| of row 1 is negative
    return [w, torch.randn(4, 10, generator=g) * 0.05]


def _codes(w: Tensor, scale: Tensor) -> Tensor:
    return torch.clamp(torch.round(w / scale), -127, 127)


@checker(
    "absmax_int8",
    "Each row gets its own scale, the largest |w| of the row divided by 127, so that the row's "
    "extreme lands on ±127; the codes are w / scale, rounded.",
)
def check_absmax_int8(fn) -> str | None:
    """Check ``fn(w) -> (codes, scale)``: absmax int8 per output row, w (out, in) float ->
    codes (out, in) int8 in [-127, 127], scale (out,) float = max|w[row]| / 127."""
    from course_lib.compress.quantize import Int8Linear

    for w in _weights():
        linear = nn.Linear(w.size(1), w.size(0))
        linear.weight.data = w.clone()
        want = Int8Linear.from_linear(linear)
        got = call(fn, w.clone())
        if not isinstance(got, tuple) or len(got) != 2:
            return f"return a pair (codes, scale), got {type(got).__name__}"
        codes, scale = got
        if not isinstance(codes, Tensor) or codes.shape != w.shape:
            return f"codes must have w's shape {tuple(w.shape)}, one code a weight"
        if not isinstance(scale, Tensor) or scale.shape != (w.size(0),):
            shape = tuple(scale.shape) if isinstance(scale, Tensor) else type(scale).__name__
            return f"scale must be (out,) = ({w.size(0)},), one a row, got {shape}"
        if codes.dtype != torch.int8:
            return f"codes must be stored as torch.int8 (1 byte each), got {codes.dtype}"
        absmax = w.abs().amax(1)
        mistakes = {
            "one scale for the whole matrix: each row needs its own (a row of tiny weights "
            "would round to 0)": (w.abs().max() / 127).expand(w.size(0)),
            "the scale divides by 128: int8 reaches -128, but a symmetric code stops at 127, "
            "so +max|w| would overflow": absmax / 128,
            "the scale is upside down: 127 / max|w|, not max|w| / 127": 127 / absmax,
            "max(w), not max(|w|): a row whose extreme is negative overflows": w.amax(1) / 127,
        }  # fmt: skip
        live = absmax > 0
        for message, wrong in mistakes.items():
            if torch.allclose(scale[live].float(), wrong[live], rtol=1e-5):
                return message
        if not torch.allclose(scale[live].float(), want.scale[live], rtol=1e-5):
            return "scale differs from max|w[row]| / 127"
        if not torch.isfinite(scale).all() or (codes[~live] != 0).any():
            return "an all-zero row must give codes 0 and a finite scale (no 0 / 0)"
        ref = want.weight_int8
        if torch.equal(codes[live], ref[live]):
            continue
        truncated = torch.trunc(w / want.scale[:, None]).to(torch.int8)
        if torch.equal(codes[live], truncated[live]):
            return "the codes are truncated toward zero: round to the nearest (torch.round)"
        wrong = (codes != ref).sum().item()
        return f"{wrong} codes differ from round(w / scale) (row-wise scale)"
    return None


@checker("dequantize_int8", "Undo the scaling: each code times its row's scale, a float again.")
def check_dequantize_int8(fn) -> str | None:
    """Check ``fn(codes, scale) -> w_hat``: codes (out, in) int8, scale (out,) -> (out, in)
    float32, codes * scale of their row; within half a step of the original weights."""
    for w in _weights():
        scale = (w.abs().amax(1) / 127).clamp(min=torch.finfo(torch.float32).tiny)
        codes = _codes(w, scale[:, None]).to(torch.int8)
        got = call(fn, codes.clone(), scale.clone())
        want = codes.float() * scale[:, None]
        if not isinstance(got, Tensor) or got.shape != w.shape:
            return f"return (out, in) = {tuple(w.shape)} floats"
        if not got.is_floating_point():
            return f"return floats (codes.float() * ...), got {got.dtype}"
        if got.shape[0] == got.shape[1] and torch.allclose(got, codes.float() * scale[None, :]):
            return "each row has one scale: scale[:, None], not scale[None, :]"
        if torch.allclose(got, codes.float() / scale[:, None]):
            return "multiply by the scale: the codes are w / scale"
        if not torch.allclose(got, want, atol=1e-7):
            return f"w_hat differs from codes * scale by up to {(got - want).abs().max():.2e}"
        if ((got - w).abs() > scale[:, None] / 2 + 1e-7).any():  # guards the test itself
            return "w_hat is more than half a step from w"
    return None


@checker(
    "magnitude_mask",
    "Rank the weights by |w|; the round(amount * numel) smallest are pruned (False), the rest "
    "kept (True).",
    "torch.topk(w.abs().flatten(), n, largest=False).indices are the n smallest; start from "
    "a mask of True and set those to False, then view it as w's shape.",
)
def check_magnitude_mask(fn) -> str | None:
    """Check ``fn(w, amount) -> mask``: bool (out, in), True where a weight is kept; the
    round(amount * w.numel()) weights of smallest |w| are False, as
    ``torch.nn.utils.prune.l1_unstructured`` chooses them."""
    from torch.nn.utils import prune

    g = torch.Generator().manual_seed(5)
    for shape, amount in (((8, 16), 0.5), ((5, 7), 0.3), ((4, 4), 0.9)):
        w = torch.randn(shape, generator=g)
        linear = nn.Linear(shape[1], shape[0])
        linear.weight.data = w.clone()
        want = prune.l1_unstructured(linear, "weight", amount).weight_mask.bool()
        got = call(fn, w.clone(), amount)
        if not isinstance(got, Tensor) or got.shape != w.shape:
            return f"return a mask of w's shape {shape}, True where a weight is kept"
        got = got.bool()
        n_pruned = round(amount * w.numel())
        where = f"(amount {amount}, {w.numel()} weights: {n_pruned} pruned)"
        if torch.equal(got, want):
            continue
        if torch.equal(~got, want):
            return f"the mask is inverted: True marks a weight that is KEPT {where}"
        if (~got).sum() == w.numel() - n_pruned != n_pruned:
            return f"amount is the fraction pruned, not kept {where}"
        if (~got).sum() != n_pruned:
            return f"{(~got).sum().item()} weights are pruned, expected {n_pruned} {where}"
        smallest_signed = torch.ones_like(got)
        smallest_signed.view(-1)[torch.topk(w.view(-1), n_pruned, largest=False).indices] = False
        if torch.equal(got, smallest_signed):
            return f"rank by |w|, not w: a large negative weight matters as much {where}"
        return f"the right number is pruned, but not the smallest |w| {where}"
    return None


@checker(
    "distill_loss",
    "Soften both distributions with the same temperature T, take the KL divergence from the "
    "teacher's to the student's, average over positions, times T².",
)
def check_distill_loss(fn) -> str | None:
    """Check ``fn(student_logits, teacher_logits, T) -> loss``: Hinton's soft-target loss,
    T² · KL(softmax(teacher / T) || softmax(student / T)), averaged over positions; logits
    (B, T_seq, V), loss a scalar."""
    from course_lib.compress.distill import distill_loss

    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(2, 5, 11, generator=g) * 3, torch.randn(2, 5, 11, generator=g) * 3
    for T in (1.0, 2.0, 4.0):
        want = distill_loss(s, t, T)
        got = call(fn, s.clone(), t.clone(), T)
        if not isinstance(got, Tensor) or got.dim() != 0:
            return "return a scalar tensor: the mean over positions"
        if torch.allclose(got, want, rtol=1e-4):
            continue
        log_p, log_q = (torch.log_softmax(x / T, -1) for x in (t, s))
        kl = (log_p.exp() * (log_p - log_q)).sum(-1).mean()
        reverse = (log_q.exp() * (log_q - log_p)).sum(-1).mean()
        mistakes = {
            "the T² factor is missing: without it the soft targets' gradients shrink as 1/T²":
                kl,
            "multiply by T², not T": T * kl,
            "that is KL(student || teacher): distillation uses the teacher's distribution "
            "first, KL(p_teacher || q_student)": T**2 * reverse,
            "that is the cross-entropy with the soft targets: it has the same gradient, but "
            "is larger by the teacher's entropy; subtract it (KL = CE - H(p))":
                T**2 * -(log_p.exp() * log_q).sum(-1).mean(),
            "that sums over positions: take the mean, so the loss does not grow with the batch":
                T**2 * (log_p.exp() * (log_p - log_q)).sum(-1).sum(),
            "the temperature softens only the teacher: divide the student's logits by T too":
                T**2 * (log_p.exp() * (log_p - torch.log_softmax(s, -1))).sum(-1).mean(),
        }  # fmt: skip
        for message, wrong in mistakes.items():
            if torch.allclose(got, wrong, rtol=1e-4):
                return f"{message} (T = {T:g})"
        return f"loss {got.item():.5f}, expected {want.item():.5f} (T = {T:g})"
    return None


@checker(
    "most_important",
    "Read Section 3's importance table the other way round: the highest scores, "
    "never a whole layer. prune_heads removes them.",
)
def check_most_important(fn) -> str | None:
    """Check the experiment ``fn(model, importance) -> model``: remove the three heads with the
    HIGHEST importance (importance (n_layer, n_head), normalised per layer) from the course
    model. It passes when three heads are gone and the held-out plays got clearly worse than
    removing the three least important ones did, and prints what it measured."""
    from course_lib.compress.measure import held_out_bpc
    from course_lib.compress.prune import head_importance, least_important, prune_heads
    from course_lib.course_model import load_or_train
    from course_lib.data import get_batch, load_tokens
    from course_lib.model import GPT
    from course_lib.poems import plays_sample

    course = load_or_train(progress=False)
    tokens, g = load_tokens("train"), torch.Generator().manual_seed(0)
    batches = [get_batch(tokens, 16, course.config.block_size, g) for _ in range(8)]
    importance = head_importance(course.model, batches)
    text = plays_sample()[:20_000]

    def bpc(model: GPT) -> float:
        return held_out_bpc(model, course.tokenizer, text)

    model = call(fn, load_or_train(progress=False).model, importance.clone())
    if not isinstance(model, GPT):
        return f"return the pruned model (a GPT), got {type(model).__name__}"
    heads = [block.attn.n_head for block in model.transformer.h]
    removed = course.config.n_layer * course.config.n_head - sum(heads)
    if removed != 3:
        return f"{removed} heads were removed (heads per layer now {heads}): remove three"
    least = prune_heads(load_or_train(progress=False).model, least_important(importance, 3))
    base, yours, low = bpc(course.model), bpc(model), bpc(least)
    print(
        f"held-out plays: {base:.3f} bits/char with every head; {low:.3f} without the three "
        f"least important heads ({low - base:+.3f}); {yours:.3f} without yours "
        f"({yours - base:+.3f})"
    )
    if yours - low < IMPORTANT_BPC:
        return (
            f"your three heads cost only {yours - low:+.3f} bits/char more than the least "
            f"important three: did you take the highest scores (importance.flatten().topk(3))?"
        )
    return None
