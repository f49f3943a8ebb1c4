"""Checkers for the exercises of Lesson 08 (notebooks/08_compression.ipynb). The right answers
come from a library's own code (torch's per-channel affine quantization, ``torch.sparse``,
``course_lib.compress``); each typical mistake is a small function beside its message."""

from __future__ import annotations

import copy
import itertools
import numbers
import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn

from course_lib.compress import Int4Linear, Int8Linear, distill_loss, quantize_int8
from course_lib.exercises import (
    NotAttempted,
    call,
    call_on_copies,
    checker,
    expect_tensor,
    guessed,
    named_mistake,
    same,
)
from course_lib.finetune import LoRALinear
from course_lib.metrics import evaluate_all
from course_lib.model import GPT

# How far the poems' held-out loss must fall for a QLoRA run to count (nats/token; about 0.08)
QLORA_FALL = 0.02

# --- Exercise 1: asymmetric int4 ---------------------------------------------------------------


def _rows() -> Tensor:
    """Rows on which every mistake shows: mixed signs, none negative, none positive, skewed, a
    single nonzero, and all zero (its scale must not be 0 / 0)."""
    w = torch.randn(6, 24, generator=torch.Generator().manual_seed(8)) * 0.1
    w[1], w[2], w[3] = w[1].abs() + 0.05, -w[2].abs(), w[3] * 0.3 + 0.02
    w[4:], w[4, 5] = 0.0, 0.7
    return w


def _affine(w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Torch's own asymmetric 4-bit code of each row of w: (codes, scale, zero point)."""
    from torch.ao.quantization.observer import PerChannelMinMaxObserver

    observer = PerChannelMinMaxObserver(
        ch_axis=0, dtype=torch.quint8, qscheme=torch.per_channel_affine, quant_min=0, quant_max=15
    )
    observer(w)
    scale, zero = observer.calculate_qparams()
    w_hat = torch.fake_quantize_per_channel_affine(w, scale, zero, 0, 0, 15)
    codes = torch.round(w_hat / scale[:, None]) + zero[:, None]
    return codes.to(torch.uint8), scale, zero.float()


def _code(w, steps=15, lo=None, hi=None, zero_of=None, codes_of=None):
    """The asymmetric code (codes, scale, zero point) of w, one step of the recipe changed."""
    lo = w.amin(1).clamp(max=0) if lo is None else lo
    hi = w.amax(1).clamp(min=0) if hi is None else hi
    scale = ((hi - lo) / steps).clamp(min=torch.finfo(torch.float32).tiny)
    zero = torch.round(-lo / scale) if zero_of is None else zero_of(lo, scale)
    codes = torch.round(w / scale[:, None]) + zero[:, None] if codes_of is None else codes_of(w, lo)
    return codes.clamp(0, 15).to(torch.uint8), scale, zero


def _symmetric_plus_8(w):
    scale = w.abs().amax(1) / 7.5
    codes = torch.round(w / scale[:, None]) + 8
    return codes.clamp(0, 15).to(torch.uint8), scale, torch.full_like(scale, 8)


def _range_without_zero(w):
    return _code(w, lo=w.amin(1), hi=w.amax(1))


def _sixteen_steps(w):
    return _code(w, steps=16)


def _zero_point_unrounded(w):
    return _code(w, zero_of=lambda lo, scale: -lo / scale)


def _shifted_then_rounded(w):
    scale = _code(w)[1][:, None]
    return _code(w, codes_of=lambda w, lo: torch.round((w - lo[:, None]) / scale))


def _truncated(w):
    scale, zero = _code(w)[1:]
    return _code(w, codes_of=lambda w, lo: torch.trunc(w / scale[:, None]) + zero[:, None])


_ASYMMETRIC_MISTAKES = {
    _symmetric_plus_8: "that is Section 2's symmetric scale, max|w| / 7.5: the asymmetric code "
    "spreads its 16 codes over the row's own range, from its minimum to its maximum",
    _range_without_zero: "the range must include 0, from min(min w, 0) to max(max w, 0), so "
    "that a weight of exactly 0 (a pruned one, say) has a code and comes back exactly 0",
    _sixteen_steps: "16 codes are 15 steps apart: the scale is the range divided by 15",
    _zero_point_unrounded: "the zero point is a code, an integer: round it, so that 0.0 lands "
    "exactly on a code",
    _truncated: "the codes are truncated toward zero: round to the nearest",
    _shifted_then_rounded: "some codes are one off: round w / scale first, then add the zero "
    "point (rounding (w - min) / scale assumes a zero point that was not rounded)",
}


def _mean_error(w: Tensor, codes: Tensor, scale: Tensor, zero: Tensor) -> float:
    return ((codes.float() - zero.float()[:, None]) * scale[:, None] - w).abs().mean().item()


def _symmetric_error(w: Tensor) -> float:
    """Mean |error| of the library's symmetric int4, one scale a row (one group a row)."""
    linear = nn.Linear(w.size(1), w.size(0), bias=False)
    linear.weight.data = w.clone()
    return (Int4Linear.from_linear(linear, w.size(1)).dequantize() - w).abs().mean().item()


@checker(
    "asymmetric_int4",
    "Give each row a scale and a zero point: its 16 codes spread evenly over the row's range, "
    "widened to hold 0, and the zero point the code that stands for 0.",
    "lo = w.amin(1).clamp(max=0) and hi = w.amax(1).clamp(min=0) are each row's range; "
    "scale = (hi - lo) / 15; zero_point = round(-lo / scale); codes = round(w / scale) + "
    "zero_point, clamped to [0, 15], as torch.uint8 (scale[:, None] broadcasts over a row).",
)
def check_asymmetric_int4(fn, w: Tensor | None = None, guess=None) -> str | None:
    """Check ``fn(w) -> (codes, scale, zero_point)``, torch's per-channel affine code: w (out, in)
    -> codes (out, in) uint8 in [0, 15], scale (out,), zero_point (out,). Given ``w``, it then
    prints the mean error against the library's symmetric int4 (a scale a row) on w and |w|."""
    rows = _rows()
    got = call_on_copies(fn, rows)
    if not isinstance(got, tuple) or len(got) != 3:
        return f"return a triple (codes, scale, zero_point), got {type(got).__name__}"
    codes = expect_tensor(got[0], rows.shape, "the codes, one a weight")
    expect_tensor(got[1], rows.shape[:1], "the scales, one a row")
    expect_tensor(got[2], rows.shape[:1], "the zero points, one a row")
    if codes.dtype != torch.uint8:
        return f"store the codes as torch.uint8 (0 to 15, unsigned), got {codes.dtype}"
    live = rows.amax(1) > rows.amin(1)  # every mistake is per row: the zero row is apart
    mine, want = tuple(x[live] for x in got), _affine(rows[live])
    if not same(mine, want, atol=1e-7):
        first = next(i for i in (1, 2, 0) if not same(mine[i].float(), want[i].float(), 1e-7))
        return named_mistake(mine, _ASYMMETRIC_MISTAKES, rows[live], atol=1e-7) or (
            f"the {('codes', 'scales', 'zero points')[first]} differ from those of torch's "
            f"asymmetric 4-bit code"
        )
    if _mean_error(rows[~live], *(x[~live] for x in got)) != 0:  # nan, where 0 / 0
        return "an all-zero row must give codes, a scale and a zero point that stand for 0s"
    if w is not None:
        ratio = [_mean_error(m, *call(fn, m.clone())) / _symmetric_error(m) for m in (w, w.abs())]
        print(guessed(guess, f"asymmetric's mean error is {ratio[0]:.2f}x symmetric's on this "
                             f"matrix, {ratio[1]:.2f}x on |w| (no negative weights)"))  # fmt: skip
    return None


# --- Exercise 2: when CSR is smaller -----------------------------------------------------------

# c_fc's shape both ways; (4, 6, 8) tells n_rows from n_rows + 1 row pointers; (3, 4, 4) ties:
# 4 nonzeros take (3 + 1) x 4 + 4 x (4 + 4) = 48 bytes, as many as dense.
CSR_CASES = ((512, 128, 8), (512, 128, 4), (4, 6, 8), (3, 4, 4), (128, 512, 4))


def _csr_bytes(n_rows: int, n_cols: int, nonzeros: int, index_bytes: int) -> int:
    """Bytes of a (n_rows, n_cols) float32 ``torch.sparse_csr`` tensor of ``nonzeros``."""
    dense = torch.zeros(n_rows * n_cols)
    dense[torch.randperm(len(dense), generator=torch.Generator().manual_seed(0))[:nonzeros]] = 1
    index = {4: torch.int32, 8: torch.int64}[index_bytes]
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state", and so on
        warnings.filterwarnings("ignore", message="Sparse")
        csr = dense.view(n_rows, n_cols).to_sparse_csr()
        csr = torch.sparse_csr_tensor(
            csr.crow_indices().to(index), csr.col_indices().to(index), csr.values(), csr.shape
        )
    parts = (csr.crow_indices(), csr.col_indices(), csr.values())
    return sum(t.numel() * t.element_size() for t in parts)


def _most_nonzeros(n_rows: int, n_cols: int, index_bytes: int) -> int:
    """The answer, from torch's own layout: its bytes with 0 and with 1 nonzero."""
    empty = _csr_bytes(n_rows, n_cols, 0, index_bytes)
    each = _csr_bytes(n_rows, n_cols, 1, index_bytes) - empty
    return (4 * n_rows * n_cols - empty - 1) // each


def _no_row_pointers(r, c, ib):
    return (4 * r * c - 1) // (4 + ib)


def _as_large_counts(r, c, ib):
    return (4 * r * c - (r + 1) * ib) // (4 + ib)


def _n_rows_pointers(r, c, ib):
    return (4 * r * c - r * ib - 1) // (4 + ib)


_CSR_MISTAKES = {
    _no_row_pointers: "the row pointers are missing: CSR also stores n_rows + 1 of them, "
    "where each row starts among the values, and where the last one ends",
    _as_large_counts: "at that count CSR takes exactly as many bytes as dense: smaller means "
    "strictly fewer",
    _n_rows_pointers: "n_rows + 1 row pointers, not n_rows: the last one marks the end",
}


@checker(
    "csr_max_nonzeros",
    "Write the bytes of each part of CSR as a function of the number of nonzeros, the dense "
    "bytes beside them, and solve for the largest count that keeps CSR strictly smaller.",
    "CSR bytes = (n_rows + 1) * index_bytes + nnz * (4 + index_bytes); dense bytes = "
    "4 * n_rows * n_cols; the largest integer nnz with CSR < dense is "
    "(dense - row pointers' bytes - 1) // (4 + index_bytes).",
)
def check_csr_max_nonzeros(fn, guess=None) -> str | None:
    """Check ``fn(n_rows, n_cols, index_bytes) -> int``: the most nonzeros with which a float32
    matrix in ``torch.sparse_csr`` (indices of ``index_bytes``) takes fewer bytes than dense.
    Then prints from which sparsity CSR is smaller for Section 2's c_fc, (512, 128)."""
    for r, c, ib in CSR_CASES:
        got = call(fn, r, c, ib)
        where = f"({r} x {c}, {ib}-byte indices)"
        got = int(got) if isinstance(got, float) and got.is_integer() else got
        if isinstance(got, bool) or not isinstance(got, numbers.Integral):
            return f"return a count of nonzeros, an integer, got {got!r} {where}"
        if got != (want := _most_nonzeros(r, c, ib)):
            message = named_mistake(got, _CSR_MISTAKES, r, c, ib)
            return f"{message or f'{got:,} nonzeros, expected {want:,}'} {where}"
    zeros = {ib: 1 - _most_nonzeros(512, 128, ib) / (512 * 128) for ib in (8, 4)}
    half = _csr_bytes(512, 128, 512 * 64, 8) / (4 * 512 * 128)
    print(guessed(guess, f"CSR is smaller from {zeros[8]:.1%} zeros with int64 indices "
                         f"(torch's default), from {zeros[4]:.1%} with int32; at Section 3's "
                         f"50% it takes {half:.2f}x the dense bytes"))  # fmt: skip
    return None


# --- Exercise 3: debug this distillation loss --------------------------------------------------

Loss = Callable[[Tensor, Tensor, float], Tensor]  # (student, teacher logits (B, T, V), T) -> ()


# Each turns a loss into one that makes its mistake; the three bugs make the function as given
def _teacher_as_input(loss: Loss) -> Loss:
    return lambda s, t, T: loss(t, s, T)  # KL(q || p)


def _batchmean_of_3d(loss: Loss) -> Loss:
    return lambda s, t, T: loss(s, t, T) * s.size(1)  # divided by B, not B * T


def _times_T(loss: Loss) -> Loss:
    return lambda s, t, T: loss(s, t, T) / T


def _mean_over_vocabulary(loss: Loss) -> Loss:
    return lambda s, t, T: loss(s, t, T) / s.size(-1)


def _no_T_factor(loss: Loss) -> Loss:
    return lambda s, t, T: loss(s, t, T) / T**2


_KL_BUGS = {  # the three bugs of the function as given
    _teacher_as_input: "that is KL(student || teacher): kl_div's input is the log of the "
    "distribution that learns, the student's, and its target the teacher's probabilities",
    _batchmean_of_3d: "'batchmean' divides by the first dimension only, B: view the logits as "
    "(B * T, V) first, so that it divides by all the positions",
    _times_T: "the loss is scaled by T: the factor is T²",
}
_KL_WRONG_FIXES = {
    _mean_over_vocabulary: "the loss is V times too small: reduction='mean' averages over all "
    "B * T * V numbers; sum over the vocabulary, average over the B * T positions",
    _no_T_factor: "the T² factor is missing",
}


def _with(mistakes: tuple[Callable[[Loss], Loss], ...]) -> Loss:
    loss = distill_loss
    for make in mistakes:
        loss = make(loss)
    return loss


@checker(
    "distill_loss_kl_div",
    "This is the function as given, with its three bugs. Read it against Section 4's formula "
    "and the documentation of the loss it calls: which argument is the log of which "
    "distribution, what does each reduction divide by, and what factor comes in front?",
    "F.kl_div(input, target) sums target * (log target - input): input = log q_T, the "
    "student's (F.log_softmax), target = p_T, the teacher's (F.softmax); reduction='batchmean' "
    "divides by input.size(0), so .reshape(-1, V) both first; then times T**2.",
)
def check_distill_loss_kl_div(fn) -> str | None:
    """Check ``fn(student_logits, teacher_logits, T) -> loss``, logits (B, T, V): Hinton's
    T² · KL(p_T || q_T) averaged over positions (the library's ``distill_loss``), the learner's
    repair of a function with three bugs: KL the wrong way round, 'batchmean' over B, times T."""
    g = torch.Generator().manual_seed(3)
    probes = [(torch.randn(2, 5, 11, generator=g) * 3, torch.randn(2, 5, 11, generator=g) * 3, T)
              for T in (2.0, 4.0)]  # fmt: skip
    got = [call_on_copies(fn, *probe) for probe in probes]
    for loss in got:
        expect_tensor(loss, (), "one number (a 0-d tensor), the mean over positions")
    messages = {**_KL_BUGS, **_KL_WRONG_FIXES}
    for n in range(len(messages) + 1):  # the fewest mistakes first; none: right
        for made in itertools.combinations(messages, n):
            if all(same(loss, _with(made)(*probe), 1e-5) for loss, probe in zip(got, probes)):
                if set(made) == set(_KL_BUGS):
                    raise NotAttempted
                return "; and ".join(messages[m] for m in made) or None
    want = distill_loss(*probes[0])
    return f"loss {got[0].item():.5f}, expected {want.item():.5f} (T = 2)"


# --- Exercise 4: QLoRA in miniature ------------------------------------------------------------


def _base(model: nn.Module) -> dict[str, Tensor]:
    """The state dict without the adapters, named as in the model without them."""
    state = model.state_dict().items()
    return {name.replace(".base_layer", ""): t for name, t in state if "lora_" not in name}


def _no_int8_base(model, ref):
    return not any(isinstance(m, Int8Linear) for m in model.modules())


def _no_adapters(model, ref):
    return not any(isinstance(m, LoRALinear) for m in model.modules())


def _adapter_on_float(model, ref):
    lora = [m for m in model.modules() if isinstance(m, LoRALinear)]
    return any(not isinstance(m.base_layer, Int8Linear) for m in lora)


def _codes_changed(model, ref):
    ours, theirs = _base(model), _base(ref)
    codes = [n for n in theirs if n.endswith(("weight_int8", ".scale"))]
    return any(n not in ours or not torch.equal(ours[n], theirs[n]) for n in codes)


def _base_trained(model, ref):
    ours, theirs = _base(model), _base(ref)
    return ours.keys() != theirs.keys() or any(not torch.equal(ours[n], theirs[n]) for n in ours)


def _adapters_untrained(model, ref):
    return all(not m.lora_B.weight.any() for m in model.modules() if isinstance(m, LoRALinear))


_QLORA_MISTAKES = {  # each says whether the returned model shows its mistake
    _no_int8_base: "the model has no int8 layer: QLoRA's base is quantized first (Section 2), "
    "1 byte a weight, and stays frozen",
    _no_adapters: "the model has no LoRA adapter: wrap each c_attn, int8 as it is, in Lesson "
    "07's adapter layer",
    _adapter_on_float: "an adapter wraps a float32 layer: quantize first, then wrap the int8 "
    "layers",
    _codes_changed: "the int8 codes differ from those of the model you were given: quantize it "
    "as it is and train the adapters alone (not the weights first, then quantize)",
    _base_trained: "weights besides the adapters moved (biases, LayerNorms, positions): freeze "
    "the whole model before adding the adapters",
    _adapters_untrained: "the adapters did not train (every B is still 0): train the model "
    "after adding them",
}


@checker(
    "qlora",
    "Quantize the copy you are given as Section 2 did, freeze all of it, wrap each attention "
    "c_attn in a LoRA adapter as in Lesson 07, and train it on the poems.",
    "quantize_int8(model); model.requires_grad_(False); then for each (name, layer) of "
    "list(model.projections()) whose name ends in 'c_attn': model.set_submodule(name, "
    "LoRALinear(layer, rank=8, alpha=16.0)); then train(model, poems, TrainConfig(...)).",
)
def check_qlora(fn, model: GPT, poems: dict[str, Tensor]) -> str | None:
    """Check the experiment ``fn(model, poems) -> model``: a copy of ``model`` frozen in int8,
    LoRA adapters trained beside it on the poems ({"train", "val"} token ids). It passes when
    the int8 codes are those of ``model``, only the adapters moved, and the poems' held-out
    loss fell by QLORA_FALL nats/token or more; it prints what it measured."""
    ref = quantize_int8(copy.deepcopy(model))
    got = call(fn, copy.deepcopy(model), poems)
    if not isinstance(got, GPT):
        return f"return the model (a GPT), got {type(got).__name__}"
    if message := named_mistake(True, _QLORA_MISTAKES, got, ref):
        return message
    before, after = (evaluate_all(m, poems["val"], model.config.block_size) for m in (ref, got))
    adapters = sum(p.numel() for name, p in got.named_parameters() if "lora_" in name)
    print(f"{adapters:,} weights trained ({adapters / got.num_params():.1%} of the model); "
          f"{ref.num_bytes() / 1e6:.2f} MB of int8 base + {4 * adapters / 1e6:.2f} MB of "
          f"adapters, against {model.num_bytes() / 1e6:.2f} MB in float32")  # fmt: skip
    print(f"held-out poems: {before:.3f} -> {after:.3f} nats/token")
    if before - after < QLORA_FALL:
        return (
            f"the poems' held-out loss fell by {before - after:.3f} nats/token only: train "
            f"longer or faster (30 steps of 8 windows at a learning rate of 2e-3 give about 0.08)"
        )
    return None
