"""Quantization: the same GPT in fewer bytes, its weights as small integer codes.

Lesson 08 (compression) derives this.

A float32 weight costs 4 bytes. Quantization stores each weight as a small integer code q and
shares one float scale s among many weights, so that W ≈ q * s:

- ``quantize_int8``: absmax per output row (``Int8Linear``). s = max|W[row]| / 127 and
  q = round(W / s) in [-127, 127]: 1 byte a weight, plus 4 bytes a row (about 0.25x of float32).
- ``quantize_int4``: groups of ``group_size`` inputs (``Int4Linear``). s = max|W[group]| / 7.5
  and q in [-8, 7], code for code what torchao's ``IntxWeightOnlyConfig(weight_dtype=torch.int4,
  granularity=PerGroup(group_size))`` computes; two codes a byte, plus 4 bytes a group (0.53
  bytes a weight for groups of 128, 0.63 for 32).
- ``quantize_bf16``: every float parameter in bfloat16 (7 bits of mantissa, not 23): 0.5x.

Every matrix is quantized, the tied embedding too: ``lm_head`` becomes a quantized layer and
``wte`` a ``QuantizedEmbedding`` that looks up the head's dequantized rows, so the vocabulary's
codes are stored once, as in the float model. Only the weights are quantized: each layer
dequantizes (q * s, float32) and multiplies in float, the honest eager path, which saves bytes
in memory and on disk but no time (that takes an integer kernel).

Each quantize_* is a ``@change``: a checkpoint records it, stores the codes as int8 / uint8
tensors, and ``load_checkpoint`` replays it before loading them. ``dequantize`` turns the codes
back into float32 nn.Linear weights (with the precision they lost), e.g. for ``to_hf``.

    >>> from course_lib.model import GPT, GPTConfig
    >>> from course_lib.compress.quantize import quantize_bf16, quantize_int4, quantize_int8
    >>> config = GPTConfig(vocab_size=256, block_size=16, n_layer=2, n_head=2, n_embd=128)
    >>> fp32 = GPT(config).num_bytes()
    >>> for quantize in (quantize_bf16, quantize_int8, quantize_int4):
    ...     print(f"{quantize.__name__}: {quantize(GPT(config)).num_bytes() / fp32:.3f}x")
    quantize_bf16: 0.500x
    quantize_int8: 0.266x
    quantize_int4: 0.144x
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from course_lib.changes import applied, change, forget
from course_lib.errors import CourseError
from course_lib.model import GPT

# An all-zero row (or group) has max|w| = 0: its scale is floored at the smallest normal float32
# (torchao's floor too), so its codes are 0 and dequantize to exactly 0, never 0 / 0.
EPS = torch.finfo(torch.float32).tiny


def round_to_codes(w: Tensor, scale: Tensor, low: int, high: int) -> Tensor:
    """round(w / scale), clamped to [low, high], as int8 codes of w's shape.

    torch.round sends a tie (x.5) to the even code. w is multiplied by 1 / scale, as torchao
    does, rather than divided by scale: the two differ in the last bit now and then, which moves
    a value within that bit of a tie to the neighbouring code (about 1 code in 500 for int4).
    """
    return torch.clamp(torch.round(w * (1.0 / scale)), low, high).to(torch.int8)


def pack_int4(codes: Tensor) -> Tensor:
    """Codes (..., n) in [-8, 7], n even -> bytes (..., n / 2) uint8, two codes a byte.

    Each code is stored as q + 8 in [0, 15] (4 bits); column 2j goes in the low half of byte j,
    column 2j + 1 in the high half.
    """
    if codes.size(-1) % 2 or (codes.numel() and not -8 <= codes.min() <= codes.max() <= 7):
        raise CourseError(
            f"pack_int4 packs int4 codes in [-8, 7] in pairs, got shape {tuple(codes.shape)} "
            f"with values in [{codes.min()}, {codes.max()}]: the last dimension must be even"
        )
    nibbles = (codes + 8).to(torch.uint8)
    return nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)


def unpack_int4(packed: Tensor) -> Tensor:
    """Bytes (..., m) uint8 -> codes (..., 2m) int8 in [-8, 7]; undoes pack_int4 exactly."""
    pairs = torch.stack([packed & 15, packed >> 4], dim=-1)  # (..., m, 2)
    return pairs.flatten(-2).to(torch.int8) - 8


class QuantizedLinear(nn.Module):
    """What Int8Linear and Int4Linear share: x (..., in) -> (..., out) = x @ W.T + bias with
    W = ``self.dequantize()`` (out, in) float32. The codes and scales are buffers (nothing of
    them trains); the bias stays a float parameter."""

    def __init__(self, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def dequantize(self, rows: Tensor | slice = slice(None)) -> Tensor:
        """The weight q * s, (out, in) float32; or the rows of ids ``rows`` (...), (..., in)."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.dequantize(), self.bias)

    def _take_bias(self, linear: nn.Linear) -> None:
        if linear.bias is not None:
            self.bias = nn.Parameter(linear.bias.detach().float().clone())

    @torch.no_grad()
    def to_linear(self) -> nn.Linear:
        """A float32 nn.Linear with the dequantized weight (what the codes kept, no more)."""
        weight = self.dequantize()
        linear = nn.Linear(self.in_features, self.out_features, self.bias is not None)
        linear.weight = nn.Parameter(weight)
        if self.bias is not None:
            linear.bias = nn.Parameter(self.bias.detach().float().clone())
        return linear.to(weight.device)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class Int8Linear(QuantizedLinear):
    """Absmax int8 per output row: ``weight_int8`` (out, in) int8 codes in [-127, 127] and
    ``scale`` (out,) float32 = max|W[row]| / 127, so the largest weight of a row is ±127 codes.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias)
        codes = torch.zeros(out_features, in_features, dtype=torch.int8)
        self.register_buffer("weight_int8", codes)
        self.register_buffer("scale", torch.ones(out_features))

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        """``linear``'s weight as int8 codes and row scales, its bias kept in float32."""
        w = linear.weight.detach().float()  # (out, in)
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None)
        scale = (w.abs().amax(dim=1) / 127).clamp(min=EPS)  # (out,)
        layer.weight_int8 = round_to_codes(w, scale[:, None], -127, 127)
        layer.scale = scale
        layer._take_bias(linear)
        return layer.to(w.device)

    def dequantize(self, rows: Tensor | slice = slice(None)) -> Tensor:
        return self.weight_int8[rows].float() * self.scale[rows][..., None]  # (..., in)

    def forward(self, x: Tensor) -> Tensor:
        if self.packed is None:
            return super().forward(x)
        # x as 7-bit codes (reduce_range), as PyTorch's dynamic Linear does on x86: without
        # AVX-512 VNNI, fbgemm adds products in pairs in an int16, which 8-bit codes overflow
        # (255 * 127 * 2 > 32767) and 7-bit ones do not. The bias is packed with the weights.
        return torch.ops.quantized.linear_dynamic(x, self.packed, reduce_range=True)

    packed = None  # fbgemm's prepacked codes, while use_int8_kernel is on (never saved)


class Int4Linear(QuantizedLinear):
    """Symmetric int4 in groups of ``group_size`` consecutive inputs, torchao's rule:
    s = max|W[group]| / 7.5 and q = round(W / s) clamped to [-8, 7], zero point 0.

    The largest weight of a group lands on ±7.5 codes: -7.5 rounds to -8 (exact), +7.5 to 8,
    clipped to 7 (half a step off), so all 16 codes are used. ``weight_packed`` (out, in / 2)
    uint8 holds two codes a byte (``pack_int4``); ``scales`` (out, in / group_size) float32,
    the weight's own dtype, as torchao keeps it.
    """

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, group_size: int = 128
    ) -> None:
        super().__init__(in_features, out_features, bias)
        self.group_size = group_size
        packed = torch.zeros(out_features, in_features // 2, dtype=torch.uint8)
        self.register_buffer("weight_packed", packed)
        self.register_buffer("scales", torch.ones(out_features, in_features // group_size))

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, group_size: int = 128) -> Int4Linear:
        """``linear``'s weight as packed int4 codes and group scales, its bias kept in float32."""
        w = linear.weight.detach().float()  # (out, in)
        out, n_in = w.shape
        layer = cls(n_in, out, linear.bias is not None, group_size)
        groups = w.view(out, n_in // group_size, group_size)  # (out, n_groups, group_size)
        scales = (groups.abs().amax(dim=-1, keepdim=True) / 7.5).clamp(min=EPS)
        layer.weight_packed = pack_int4(round_to_codes(groups, scales, -8, 7).view(out, n_in))
        layer.scales = scales.squeeze(-1)  # (out, n_groups)
        layer._take_bias(linear)
        return layer.to(w.device)

    def codes(self) -> Tensor:
        """The codes, unpacked: (out, in) int8 in [-8, 7]."""
        return unpack_int4(self.weight_packed)

    def dequantize(self, rows: Tensor | slice = slice(None)) -> Tensor:
        codes = unpack_int4(self.weight_packed[rows]).float()  # (..., in)
        groups = codes.unflatten(-1, (-1, self.group_size))  # (..., n_groups, group_size)
        return (groups * self.scales[rows][..., None]).flatten(-2)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, group_size={self.group_size}"


class QuantizedEmbedding(nn.Module):
    """The token embedding tied to a quantized lm_head: idx (B, T) -> (B, T, C), the head's
    dequantized rows. It holds the head itself (the same module as ``model.lm_head``), so the
    vocabulary's codes are one set of tensors: stored once, moved to a device once."""

    def __init__(self, head: QuantizedLinear) -> None:
        super().__init__()
        self.head = head

    def forward(self, idx: Tensor) -> Tensor:
        return self.head.dequantize(idx)


# ---------------------------------------------------------------------------------------------
# Quantizing a GPT (and back)


def _projections(model: GPT, fn: str) -> list[tuple[str, nn.Linear]]:
    """(name, layer) of every projection of the blocks (``model.projections()``), each checked
    to be a plain nn.Linear, in a model no quantize_* has touched and whose lm_head is wte."""
    if done := applied(model, *_QUANTIZE):
        name = done[0]["change"]
        raise CourseError(
            f"the model is already quantized to {name.rpartition('_')[2]} ({name}): {fn} "
            f"quantizes a float32 model. Quantize the original instead, "
            f"load_checkpoint(path).model of the float32 checkpoint (dequantize(model) gives "
            f"float32 weights, not the precision they lost)"
        )
    if model.lm_head.weight is not model.transformer.wte.weight:
        raise CourseError(
            f"{fn} quantizes the tied wte / lm_head matrix, and this model's lm_head is its own "
            f"({type(model.lm_head).__name__}, e.g. from add_classifier): quantize the language "
            f"model, then add the head"
        )
    found = list(model.projections())
    for name, layer in found:
        if type(layer) is not nn.Linear:
            raise CourseError(
                f"{name} is a {type(layer).__name__}, and {fn} quantizes plain nn.Linear "
                f"layers: merge LoRA adapters first (merge_lora(model))"
            )
    return found


def _swap_in(model: GPT, layers: list, quantize: Callable[[nn.Linear], QuantizedLinear]) -> GPT:
    for name, layer in layers:
        model.set_submodule(name, quantize(layer))
    model.lm_head = quantize(model.lm_head)
    model.transformer.wte = QuantizedEmbedding(model.lm_head)
    return model


@change("quantize_int8")
def quantize_int8(model: GPT) -> GPT:
    """Every matrix of ``model`` (the blocks' projections and the tied wte / lm_head) as int8
    codes with a float32 scale per output row (``Int8Linear``). Changed in place; returned."""
    return _swap_in(model, _projections(model, "quantize_int8"), Int8Linear.from_linear)


@change("quantize_int4")
def quantize_int4(model: GPT, group_size: int = 128) -> GPT:
    """Every matrix of ``model`` as int4 codes with a float32 scale per ``group_size`` inputs
    (``Int4Linear``, torchao's codes). Changed in place; returned."""
    layers = _projections(model, "quantize_int4")
    if type(group_size) is not int or group_size < 2 or group_size % 2:  # bool is no int here
        raise CourseError(
            f"group_size={group_size!r}, expected an even integer >= 2 (two int4 codes share a "
            f"byte): 32 or 128 are usual"
        )
    named = [*layers, ("lm_head", model.lm_head)]
    widths = sorted({layer.in_features for _, layer in named})
    for name, layer in named:
        if layer.in_features % group_size:
            valid = [g for g in range(2, widths[0] + 1, 2) if all(w % g == 0 for w in widths)]
            raise CourseError(
                f"group_size={group_size} does not divide {layer.in_features}, the input width "
                f"of {name}: the groups cut every row into equal pieces. Use one of {valid}"
            )
    return _swap_in(model, layers, lambda m: Int4Linear.from_linear(m, group_size))


@change("quantize_bf16")
def quantize_bf16(model: GPT) -> GPT:
    """Every float parameter (and float buffer) of ``model`` in bfloat16. Changed in place.

    A @change too, though no module changes: loading replays it, so the model it builds expects
    the bfloat16 tensors the checkpoint holds, and no cast happens silently."""
    _projections(model, "quantize_bf16")
    return model.to(torch.bfloat16)


@torch.no_grad()
def use_int8_kernel(model: GPT, on: bool = True) -> GPT:
    """Run every ``Int8Linear`` of ``model`` through PyTorch's int8 kernel (fbgemm, on a CPU),
    with the same codes and row scales, instead of dequantizing to float32 and multiplying.

    The kernel multiplies integers: it also rounds each input x to 7 bits (one scale and zero
    point a call, "dynamic" quantization), which costs a little precision. 7, not 8: fbgemm adds
    8-bit products in pairs into an int16 that they overflow on CPUs without AVX-512 VNNI, and
    7 bits give the same result on every x86 CPU. Nothing saved changes: this is a way of
    running the model, not a change of it (``on=False`` goes back). Changed in place.
    """
    layers = [m for m in model.modules() if isinstance(m, Int8Linear)]
    if not layers:
        raise CourseError("the model has no Int8Linear layers: quantize_int8(model) first")
    for layer in layers:
        layer.packed = None
        if not on:
            continue
        if layer.weight_int8.device.type != "cpu":
            raise CourseError(
                f"the int8 kernel (fbgemm) runs on a CPU, and the model is on "
                f"{layer.weight_int8.device}: move it with model.cpu() first"
            )
        zero_points = torch.zeros(layer.out_features, dtype=torch.long)
        with warnings.catch_warnings():
            # torch 2.13 says its quantized tensors will go in a later release: the pinned
            # torch has them, and they are the way into its int8 kernel.
            warnings.filterwarnings("ignore", message=".*quantized tensor creation functions")
            weight = torch._make_per_channel_quantized_tensor(
                layer.weight_int8, layer.scale.double(), zero_points, 0
            )
        bias = None if layer.bias is None else layer.bias.detach().float()
        layer.packed = torch.ops.quantized.linear_prepack(weight, bias)
    return model


_QUANTIZE = (quantize_int8, quantize_int4, quantize_bf16)  # what dequantize undoes


@torch.no_grad()
def dequantize(model: GPT) -> GPT:
    """Back to float32 nn.Linear weights, tied wte / lm_head included, with what the codes kept
    (the rounding is not undone): a plain GPT again, which ``to_hf`` converts. The quantize_*
    change record goes too. Changed in place; returned."""
    if not applied(model, *_QUANTIZE):
        raise CourseError("the model is not quantized: nothing to dequantize")
    for name, layer in model.projections():
        if isinstance(layer, QuantizedLinear):
            model.set_submodule(name, layer.to_linear())
    if isinstance(model.lm_head, QuantizedLinear):
        model.lm_head = model.lm_head.to_linear()
        wte = nn.Embedding(model.config.vocab_size, model.config.n_embd)
        wte.weight = model.lm_head.weight  # tied again, as GPT builds it
        model.transformer.wte = wte
    model.to(torch.float32)  # after quantize_bf16
    return forget(model, *_QUANTIZE)
