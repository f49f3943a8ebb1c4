"""Checkers for the exercises of Lesson 04 (notebooks/04_decoder_stack.ipynb).

The right answers come from ``course_lib.model``: the count from the model itself (built on the
meta device), the blocks' outputs from a course ``Block``'s own parts. Each typical mistake is a
small function beside the message that names it.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import torch
from torch import Tensor, nn

from course_lib.exercises import Feedback, call_on_copies, checker, expect_tensor, named_mistake
from course_lib.model import GPT, Block, GPTConfig

# --- Exercise 1: count the parameters of any configuration ------------------------------------

_CONFIGS = [
    GPTConfig(vocab_size=100, block_size=16, n_layer=2, n_head=2, n_embd=32),
    GPTConfig(vocab_size=100, block_size=16, n_layer=2, n_head=2, n_embd=32, bias=False),
    GPTConfig(vocab_size=2048, block_size=256, n_layer=4, n_head=4, n_embd=256,
              positions="sinusoidal"),
    GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768, bias=False,
              positions="sinusoidal"),
]  # fmt: skip


def _model(c: GPTConfig, tied: bool = True) -> GPT:
    """GPT(c) on the meta device (shapes, no memory), its head untied when ``tied`` is False."""
    with torch.device("meta"):
        model = GPT(c)
        if not tied:  # a matrix of its own instead of wte's
            model.lm_head.weight = nn.Parameter(torch.empty_like(model.lm_head.weight))
    return model


def _count(c: GPTConfig, tied: bool = True) -> int:
    return _model(c, tied).num_params()


def _biases(c: GPTConfig, of_norms: bool) -> int:
    """How many biases the LayerNorms (or the Linear layers) have with ``bias=True``."""
    named = _model(replace(c, bias=True)).named_parameters()
    return sum(p.numel() for n, p in named if n.endswith(".bias") and ("ln_" in n) == of_norms)


# Each mistake: what it adds to the true count (negative: what it leaves out), 0 where it
# makes no difference. They add up, so the checker also names several made at once.
_COUNT_MISTAKES = {
    lambda c, tied: 0 if tied else -c.vocab_size * c.n_embd: "an untied head is a second "
    "(vocab_size, n_embd) matrix: count it",
    lambda c, tied: c.vocab_size * c.n_embd if tied else 0: "a tied head is the token table "
    "itself: count that matrix once",
    lambda c, tied: 0 if tied else c.vocab_size: "the head has no bias, tied or not: it is a "
    "Linear(n_embd, vocab_size) without one",
    lambda c, tied: c.block_size * c.n_embd if c.positions == "sinusoidal" else 0: "sinusoidal "
    "positions are a fixed table, computed and never trained: no parameters",
    lambda c, tied: 0 if c.bias else _biases(c, of_norms=True): "bias=False removes the "
    "LayerNorms' biases too: each keeps only its n_embd weights",
    lambda c, tied: 0 if c.bias else _biases(c, of_norms=False): "bias=False removes the "
    "biases of every Linear layer",
}


def _described(c: GPTConfig, tied: bool) -> str:
    return (
        f"vocab {c.vocab_size}, context {c.block_size}, {c.n_layer} layers, {c.n_embd} wide, "
        f"bias={c.bias}, {c.positions} positions, {'tied' if tied else 'untied'} head"
    )


def _named_counting_mistakes(got: int, c: GPTConfig, tied: bool) -> str | None:
    """The fewest typical mistakes whose sum makes ``got``, named; None if none does."""
    deltas = {msg: delta(c, tied) for delta, msg in _COUNT_MISTAKES.items()}
    made = [msg for msg, d in deltas.items() if d]
    for n in range(1, 4):
        for combination in itertools.combinations(made, n):
            if got == _count(c, tied) + sum(deltas[m] for m in combination):
                return "; and ".join(combination)
    return None


@checker(
    "param_count",
    "Walk through the model as section 4 builds it, one module after the other, and ask of each "
    "what the configuration changes: is there a bias, is the position table learned, is the "
    "head a matrix of its own?",
    "Per block: c_attn (C -> 3C), attn.c_proj (C -> C), c_fc (C -> 4C), mlp.c_proj (4C -> C), "
    "each with out_features biases if config.bias, and ln_1, ln_2 with C weights (+ C biases if "
    "config.bias). Then wte (V x C), wpe (T x C) only if config.positions == 'learned', ln_f, "
    "and V x C more (no bias) if not tied.",
)
def check_param_count(fn) -> str | None:
    """Check ``fn(config, tied) -> int``: the number of parameters of ``GPT(config)``, its head
    tied to the token table or a matrix of its own, against the model's own count. Then shows
    what untying costs, and what sinusoidal positions save, in the course model and GPT-2 small."""
    for c, tied in itertools.product(_CONFIGS, (True, False)):
        got = call_on_copies(fn, c, tied)
        if isinstance(got, bool) or not isinstance(got, int):
            return f"return the count as an int, got {type(got).__name__}"
        want = _count(c, tied)
        if got != want:
            mistakes = _named_counting_mistakes(got, c, tied)
            numbers = f"for {_described(c, tied)} you said {got:,}, the model has {want:,}"
            return f"{mistakes} ({numbers})" if mistakes else numbers
    print("what the choices cost, counted by your function:")
    for name, c in [("course model", GPTConfig.course()), ("GPT-2 small", GPTConfig.gpt2())]:
        tied = call_on_copies(fn, c, True)
        untie = call_on_copies(fn, c, False) - tied
        saved = tied - call_on_copies(fn, replace(c, positions="sinusoidal"), True)
        print(
            f"  {name}: {tied:,} parameters; an untied head adds {untie:,} ({untie / tied:.0%}), "
            f"sinusoidal positions save {saved:,} ({saved / tied:.1%})"
        )
    return None


# --- Exercises 2 and 3: a block's parts in another order ---------------------------------------


def _random_block() -> tuple[Block, Tensor]:
    """A block whose every weight (LayerNorms too) is random, so every mistake shows, and an
    input x (2, 5, 32); seeded."""
    torch.manual_seed(0)
    block = Block(_CONFIGS[0]).eval()
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return block, torch.randn(2, 5, 32)


def _attn(block: Block, h: Tensor) -> Tensor:
    return block.attn(h)[0]  # attn returns (output, weights or None)


def _output(fn, block: Block, x: Tensor) -> Tensor:
    """The learner's block output (a returned pair unpacked), checked for its shape."""
    try:
        got = call_on_copies(fn, block, x)
    except TypeError as err:
        if "tuple" not in str(err):
            raise
        raise Feedback(
            f"block.attn returns a pair (output, weights): take its [0] ({err})"
        ) from err
    got = got[0] if isinstance(got, tuple) else got
    return expect_tensor(got, x.shape, "the block's output (B, T, C)")


def _differs(got: Tensor, want: Tensor, mistakes: dict, block: Block, x: Tensor) -> str:
    wrong = f"output differs from the expected one by up to {(got - want).abs().max():.3g}"
    return named_mistake(got, mistakes, block, x) or wrong


def _parallel(block: Block, x: Tensor) -> Tensor:
    n = block.ln_1(x)
    return x + _attn(block, n) + block.mlp(n)


_PARALLEL_MISTAKES = {
    lambda b, x: b(x)[0]: "that is GPT-2's sequential block, where the MLP reads attention's "
    "result: in the parallel block both branches read ln_1(x), the block's own input",
    lambda b, x: x + _attn(b, b.ln_1(x)) + b.mlp(b.ln_2(x)): "GPT-J and PaLM normalise once: "
    "the MLP reads ln_1(x) too, ln_2 is not used",
    lambda b, x: _parallel(b, x) - x: "the residual is missing: add both branches' outputs to x",
    lambda b, x: x + _attn(b, b.ln_1(x)): "the MLP branch is missing: add its output too",
    lambda b, x: x + b.mlp(b.ln_1(x)): "the attention branch is missing: add its output too",
    lambda b, x: x + _attn(b, x) + b.mlp(x): "the branches read x unnormalised: both read ln_1(x)",
}


@checker(
    "parallel_forward",
    "The parallel block of GPT-J and PaLM: attention and the MLP both read the same normalised "
    "input, side by side, and both outputs are added to x in one step. It normalises once, "
    "with ln_1; ln_2 goes unused.",
    "n = block.ln_1(x), then return x + block.attn(n)[0] + block.mlp(n).",
)
def check_parallel_forward(fn) -> str | None:
    """Check ``fn(block, x) -> (B, T, C)``: a course Block's parts run as a parallel block."""
    block, x = _random_block()
    with torch.no_grad():
        got, want = _output(fn, block, x), _parallel(block, x)
        if not torch.allclose(got, want, atol=1e-5):
            return _differs(got, want, _PARALLEL_MISTAKES, block, x)
    return None


def _no_residual(block: Block, x: Tensor) -> Tensor:
    return block.mlp(block.ln_2(_attn(block, block.ln_1(x))))


_NO_RESIDUAL_MISTAKES = {
    lambda b, x: b(x)[0]: "that is the normal pre-norm block, with both residual connections: "
    "drop them, so that each sublayer's output replaces its input",
    lambda b, x: b.mlp(b.ln_2(x + _attn(b, b.ln_1(x)))): "the attention step still adds to x: "
    "drop its residual too",
    lambda b, x: (h := _attn(b, b.ln_1(x))) + b.mlp(b.ln_2(h)): "the MLP step still adds to its "
    "input: drop its residual too",
    lambda b, x: b.mlp(_attn(b, x)): "keep the LayerNorms: only the residual connections go",
    lambda b, x: b.mlp(b.ln_2(x)): "the MLP must read the attention step's output, not the "
    "block's input x",
}


def _stack(forward) -> tuple[float | None, float]:
    """The experiment: a 12-block course GPT at initialisation (GPT-2's), its blocks run with
    ``forward(block, x)``, one backward pass of the loss on random tokens. Returns the gradient
    norm of the first block's weight matrices (None: no gradient reached them) and how alike the
    positions end up: the mean cosine similarity of the final vectors of two different positions
    (1: all the same vector)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=100, block_size=16, n_layer=12, n_head=2, n_embd=32))
    ids = torch.randint(0, 100, (4, 17), generator=torch.Generator().manual_seed(0))
    x = model.transformer.wte(ids[:, :-1]) + model.transformer.wpe(torch.arange(16))
    for block in model.transformer.h:
        x = forward(block, x)
        x = x[0] if isinstance(x, tuple) else x
    h = model.transformer.ln_f(x)
    unit = torch.nn.functional.normalize(h.detach(), dim=-1)
    cos = unit @ unit.transpose(1, 2)  # (B, T, T)
    alike = ((cos.sum((1, 2)) - 16) / (16 * 15)).mean().item()  # off the diagonal only
    if h.requires_grad:
        logits = model.lm_head(h).flatten(0, 1)
        torch.nn.functional.cross_entropy(logits, ids[:, 1:].flatten()).backward()
    grads = [p.grad for p in model.transformer.h[0].parameters() if p.dim() == 2]
    if any(g is None for g in grads):
        return None, alike
    return torch.cat([g.flatten() for g in grads]).norm().item(), alike


@checker(
    "no_residual_forward",
    "Keep the block's parts and their order, a LayerNorm before each sublayer as in GPT-2, but "
    "let each sublayer's output replace its input instead of being added to it.",
    "h = block.attn(block.ln_1(x))[0], then return block.mlp(block.ln_2(h)).",
)
def check_no_residual(fn) -> str | None:
    """Check ``fn(block, x) -> (B, T, C)``: a course Block's parts run without residual
    connections; then the experiment: in a 12-block stack of them far less gradient reaches the
    first block than in the pre-norm stack, and every position ends up the same vector."""
    block, x = _random_block()
    with torch.no_grad():
        got, want = _output(fn, block, x), _no_residual(block, x)
        if not torch.allclose(got, want, atol=1e-5):
            return _differs(got, want, _NO_RESIDUAL_MISTAKES, block, x)
    (plain, plain_alike), (pre, pre_alike) = _stack(fn), _stack(lambda block, x: block(x))
    if plain is None:
        return "no gradient reached the first block's weights: compute with autograd on"
    print(
        f"gradient reaching the first block: {plain:.3g} without residuals, {pre:.3g} with "
        f"({pre / plain:.0f} times as much); how alike the positions end up (cosine, 1 = the "
        f"same vector): {plain_alike:.3f} without, {pre_alike:.3f} with"
    )
    if plain > pre / 5 or plain_alike < 0.99 or pre_alike > 0.5:
        return "the experiment did not come out as expected: please report it as a course bug"
    return None
