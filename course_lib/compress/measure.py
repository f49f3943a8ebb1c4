"""What to measure about a compressed model, and how: bytes, bits per character, tokens/s.

Lesson 08 (compression) uses this to compare every way of compressing on the same numbers.

- Bytes on disk (``disk_bytes``): what a file costs to store, download and load, counted by
  really saving the model as ``save_checkpoint`` does (``model.safetensors``, the codes of a
  quantized model as int8 / uint8 tensors), not estimated from the parameter count.
- Bits per character on held-out text (``held_out_bpc``): what the compression cost in
  quality, in a unit that compares across tokenizers (Lesson 07 reports the held-out plays,
  ``poems.plays_sample()``, in it).
- Tokens per second when generating (``generation_speed``): what a chat user waits for. One
  sequence (batch 1), each new token one forward pass of one position through the KV cache,
  as ``sampling.generate`` runs it. Prefill (``prefill_speed``) is the other half of the wait:
  reading the prompt, all its positions in one forward pass, many tokens a matrix multiply.

Why fewer bytes need not mean more speed. Generating one token reads every weight once and
does one multiply-add with it. The course model's 3.5 MB fit in a CPU's cache, and its matrices
are small: a token is dozens of small operations, each over in microseconds, so Python and the
launching of operations set the pace (overhead-bound: a few GFLOP/s, a few percent of what the
CPU multiplies at), and a quantized layer that dequantizes its codes to float32 before
multiplying adds work. GPT-2 small's 500 MB do not fit: they stream in from memory for every
token (memory-bound), and there fewer bytes per weight pay, provided the kernel reads the
small codes directly (``use_int8_kernel``). Prefill reuses each weight for many tokens, so it
is bound by the arithmetic (compute-bound) on any model. Timings depend on the machine and on
what else runs on it: ``compare_speed`` times models side by side (``course_lib.timing``), and
timings compare only on one machine, in one session.

    >>> from course_lib.compress.measure import measure, table
    >>> from course_lib.compress.quantize import quantize_int8
    >>> from course_lib.model import GPT, GPTConfig
    >>> config = GPTConfig(vocab_size=256, block_size=16, n_layer=2, n_head=2, n_embd=128)
    >>> rows = [measure(GPT(config), "float32", speed=False),
    ...         measure(quantize_int8(GPT(config)), "int8", speed=False)]
    >>> print(table(rows))                  # speed=False, no text: those columns are left out
    model   |  params | MB on disk | bytes x
    float32 | 431,616 |       1.73 |    1.00
    int8    | 431,616 |       0.46 |    0.27

(``params`` counts the weights a model computes with, ``count_weights``: a quantized matrix
has as many as before, however few bytes each.)
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from course_lib.attention import KVCache
from course_lib.checkpoint import WEIGHTS, save_checkpoint
from course_lib.errors import CourseError
from course_lib.metrics import bits_per_char, evaluate_all
from course_lib.model import GPT
from course_lib.timing import Timings, compare

# table()'s columns: bytes and speeds as ratios to the first row ("x"), bits/char as a difference.
TABLE_COLUMNS = ("model", "params", "MB on disk", "bytes x", "bits/char", "bpc delta",
                 "tokens/s", "speed x", "prefill tokens/s", "prefill x")  # fmt: skip


class Tokenizer(Protocol):
    """Anything with ``encode(text) -> list[int]``, e.g. ``BPETokenizer``."""

    def encode(self, text: str) -> list[int]: ...


@dataclass
class Measurement:
    """One model's numbers. ``params``: ``count_weights(model)``; ``bytes``: its model.safetensors
    (``disk_bytes``); ``bits_per_char``: on held-out text; the speeds in tokens/s (generation,
    prefill). None where not measured."""

    name: str
    params: int
    bytes: int
    bits_per_char: float | None = None
    tokens_per_s: float | None = None
    prefill_tokens_per_s: float | None = None


def count_weights(model: GPT) -> int:
    """The weights ``model`` computes with, each tied one once: its parameters, and the in x out
    codes of each quantized matrix (``num_params`` counts saved tensors instead: an int4
    matrix's packed bytes, two codes each, and the scales)."""
    from course_lib.compress.quantize import QuantizedLinear

    quantized = [m for m in model.modules() if isinstance(m, QuantizedLinear)]  # each once
    n = sum(p.numel() for p in model.parameters())  # biases, LayerNorms, positions, floats
    return n + sum(m.in_features * m.out_features for m in quantized)


def disk_bytes(model: GPT) -> int:
    """The size in bytes of the model.safetensors that ``save_checkpoint`` writes for ``model``:
    the weights (each tied tensor once) plus a small header of names, shapes and dtypes."""
    with tempfile.TemporaryDirectory() as tmp:
        path = save_checkpoint(Path(tmp) / "model", model)
        return (path / WEIGHTS).stat().st_size


def held_out_bpc(model: GPT, tokenizer: Tokenizer, text: str) -> float:
    """Bits per character of ``text``: its tokens in consecutive windows of the model's
    block_size (``evaluate_all``), the loss over the text's characters (``bits_per_char``)."""
    if not text:
        raise CourseError("the text is empty: give held-out text, e.g. poems.plays_sample()")
    fast = getattr(tokenizer, "fast", None)  # BPETokenizer's Rust twin: the same ids, sooner
    ids = torch.tensor(fast().encode(text).ids if fast else tokenizer.encode(text))
    block = model.config.block_size
    if len(ids) <= block:
        raise CourseError(
            f"the text is {len(ids)} tokens, and one window of the context block_size={block} "
            f"needs {block + 1}: give a longer text (thousands of characters)"
        )
    loss = evaluate_all(model, ids, block)
    return bits_per_char(loss, len(ids), len(text))


def generation_speed(model: GPT, n_tokens: int = 64, runs: int = 5, prompt_len: int = 16) -> float:
    """Tokens per second generating ``n_tokens`` tokens after a ``prompt_len``-token prompt, at
    batch 1 with the KV cache: each token one forward pass of one position, and the most likely
    next token taken (greedy: the same work every run). The prompt is read once, before any
    clock starts (that is prefill). The median of ``runs`` timed runs after a warm-up run
    (``timing.compare``)."""
    _check_count("runs", runs)
    gen, _ = compare_speed({"": model}, n_tokens, prompt_len, prefill=False, rounds=runs)
    return gen.rate("", n_tokens)


def prefill_speed(model: GPT, T: int | None = None, runs: int = 5, batch_size: int = 1) -> float:
    """Tokens per second reading a prompt: one forward pass over ``batch_size`` sequences of
    ``T`` tokens (default: the whole context) into a new KV cache, as generation starts. The
    median of ``runs`` timed runs after a warm-up run (``timing.compare``)."""
    block = model.config.block_size
    T = block if T is None else T
    _check_count("runs", runs)
    _, pre = compare_speed({"": model}, generate=False, T=T, batch_size=batch_size, rounds=runs)
    return pre.rate("", batch_size * T)


def compare_speed(
    models: dict[str, GPT],
    n_tokens: int = 64,
    prompt_len: int = 16,
    *,
    T: int | None = None,
    batch_size: int = 1,
    rounds: int = 7,
    threads: int | None = None,
    generate: bool = True,
    prefill: bool = True,
) -> tuple[Timings | None, Timings | None]:
    """Generation and prefill of several models, timed side by side in interleaved rounds
    (``timing.compare``), so that their ratios mean something. Generation: ``n_tokens`` greedy
    tokens at batch 1 after a ``prompt_len``-token prompt read before the clock; prefill: a
    forward pass over (``batch_size``, ``T``) tokens, T the whole context by default. Returns
    (generation, prefill) ``Timings`` (None for the one not asked for), timed with ``threads``
    PyTorch threads (default: as set); print them with
    ``.table(work=n_tokens, unit="tokens/s")`` and ``.table(work=batch_size * T, ...)``."""
    _check_count("n_tokens", n_tokens)
    _check_count("prompt_len", prompt_len)
    _check_count("batch_size", batch_size)
    gen = pre = None
    with _eval(models.values()):
        if generate:
            cases = {n: _generation_call(m, n_tokens, prompt_len) for n, m in models.items()}
            gen = compare(cases, rounds=rounds, threads=threads)
        if prefill:
            cases = {n: _prefill_call(m, T, batch_size) for n, m in models.items()}
            pre = compare(cases, rounds=rounds, threads=threads)
    return gen, pre


def measure(
    model: GPT,
    name: str = "",
    tokenizer: Tokenizer | None = None,
    text: str | None = None,
    speed: bool = True,
    n_tokens: int = 64,
    runs: int = 5,
) -> Measurement:
    """Parameters, bytes on disk, and (given a tokenizer and text) bits per character, and
    (``speed=True``) generation and prefill speed. ``name`` defaults to the model's changes."""
    if (tokenizer is None) != (text is None):
        raise CourseError(
            "bits per character needs both a tokenizer and a text: pass both (e.g. "
            "tokenizer=ckpt.tokenizer, text=poems.plays_sample()) or neither"
        )
    name = name or " + ".join(map(_change_name, model.changes)) or "model"
    return Measurement(
        name=name,
        params=count_weights(model),
        bytes=disk_bytes(model),
        bits_per_char=None if text is None else held_out_bpc(model, tokenizer, text),
        tokens_per_s=generation_speed(model, n_tokens, runs) if speed else None,
        prefill_tokens_per_s=prefill_speed(model, runs=runs) if speed else None,
    )


def table(rows: list[Measurement]) -> str:
    """The measurements as an aligned text table, each compared with the first row: bytes and
    speeds as ratios (x), bits per character as a difference. A column nothing was measured for
    is left out; "-" marks a value not measured."""
    if not rows:
        raise CourseError("no measurements to tabulate: pass a list of measure(...) results")
    first = rows[0]

    def ratio(value: float | None, base: float | None) -> str:
        return "-" if value is None or not base else f"{value / base:.2f}"

    def number(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    columns: dict[str, list[str]] = {name: [] for name in TABLE_COLUMNS}
    for r in rows:
        delta = None
        if r.bits_per_char is not None and first.bits_per_char is not None:
            delta = r.bits_per_char - first.bits_per_char
        cells = [
            r.name, f"{r.params:,}", f"{r.bytes / 1e6:.2f}", ratio(r.bytes, first.bytes),
            number(r.bits_per_char, ".3f"), number(delta, "+.3f"),
            number(r.tokens_per_s, ".1f"), ratio(r.tokens_per_s, first.tokens_per_s),
            number(r.prefill_tokens_per_s, ".0f"),
            ratio(r.prefill_tokens_per_s, first.prefill_tokens_per_s),
        ]  # fmt: skip
        for name, cell in zip(TABLE_COLUMNS, cells, strict=True):
            columns[name].append(cell)
    kept = {k: v for k, v in columns.items() if any(cell != "-" for cell in v)}
    widths = [max(len(k), *map(len, v)) for k, v in kept.items()]
    lines = []
    for i in range(-1, len(rows)):  # -1: the header
        cells = [k if i < 0 else v[i] for k, v in kept.items()]
        aligned = [cells[0].ljust(widths[0])]
        aligned += [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        lines.append(" | ".join(aligned).rstrip())
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CourseError(f"{name} must be an integer >= 1, got {value!r}")


def _change_name(record: dict) -> str:
    """A change record as a short name: "quantize_int4(group_size=32)"."""
    args = ", ".join(f"{k}={v!r}" for k, v in (record.get("args") or {}).items())
    return record["change"] + (f"({args})" if args else "")


def _device(model: GPT) -> torch.device:
    return next(chain(model.parameters(), model.buffers())).device


def _tokens(model: GPT, T: int, batch_size: int, device: torch.device) -> Tensor:
    """A fixed (batch_size, T) block of token ids: the same work every call."""
    n = batch_size * T
    return (torch.arange(n, device=device) * 7919 % model.config.vocab_size).view(batch_size, T)


def _generation_call(model: GPT, n_tokens: int, prompt_len: int) -> Callable[[], None]:
    """A function that generates ``n_tokens`` greedy tokens after a prompt read once, here: each
    call starts from the same prompt's cache (its tensors are kept, never written to)."""
    block = model.config.block_size
    if prompt_len + n_tokens > block:
        fix = f"n_tokens={block - prompt_len} or fewer, or a shorter prompt_len"
        if prompt_len >= block:
            fix = f"a prompt_len below {block}, e.g. prompt_len={block // 2}"
        raise CourseError(
            f"prompt_len={prompt_len} + n_tokens={n_tokens} = {prompt_len + n_tokens} tokens do "
            f"not fit the context block_size={block}, and the KV cache holds them all: use {fix}"
        )
    prompt = _tokens(model, prompt_len, 1, _device(model))
    with torch.inference_mode():
        read = model.new_kv_cache()
        first = model(prompt, kv_cache=read).logits[:, -1]  # (1, vocab_size)

    @torch.inference_mode()
    def run() -> None:
        cache = [KVCache(layer.k, layer.v) for layer in read]  # the prompt, read
        logits = first
        for _ in range(n_tokens):
            token = logits.argmax(dim=-1, keepdim=True)  # (1, 1)
            logits = model(token, kv_cache=cache).logits[:, -1]

    return run


def _prefill_call(model: GPT, T: int | None, batch_size: int) -> Callable[[], None]:
    block = model.config.block_size
    T = block if T is None else T
    _check_count("T", T)
    if block < T:
        raise CourseError(f"T={T} is longer than the context block_size={block}: use T={block}")
    idx = _tokens(model, T, batch_size, _device(model))

    @torch.inference_mode()
    def run() -> None:
        model(idx, kv_cache=model.new_kv_cache())

    return run


@contextmanager
def _eval(models: Iterable[GPT]) -> Iterator[None]:
    """The models in eval mode (no dropout) while timed, each one's mode restored after."""
    models = list(models)
    modes = [m.training for m in models]
    try:
        for m in models:
            m.eval()
        yield
    finally:
        for m, mode in zip(models, modes, strict=True):
            m.train(mode)
