"""Checkers for the exercises of Lesson 04 (notebooks/04_decoder_stack.ipynb)."""

from __future__ import annotations

import torch

from course_lib.exercises import call, checker
from course_lib.model import GPT, Block, GPTConfig

_CONFIGS = [
    GPTConfig(vocab_size=100, block_size=16, n_layer=2, n_head=2, n_embd=32),
    GPTConfig(vocab_size=2048, block_size=256, n_layer=4, n_head=4, n_embd=256),
    GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768),
]


def _count(c: GPTConfig, lm_head: bool = False, biases: bool = True, norms: bool = True,
           positions: bool = True, hidden: int = 4) -> int:  # fmt: skip
    C, H = c.n_embd, hidden * c.n_embd
    block = C * 3 * C + C * C + C * H + H * C
    if biases:
        block += 3 * C + C + H + C
    if norms:
        block += 2 * 2 * C
    total = c.vocab_size * C + c.n_layer * block + (2 * C if norms else 0)
    return total + (c.block_size * C if positions else 0) + (c.vocab_size * C if lm_head else 0)


_HINT = (
    "Count one block (ln_1, c_attn, c_proj, ln_2, c_fc, c_proj), times n_layer, plus wte, wpe "
    "and ln_f. A Linear(a, b) has a*b weights and b biases."
)


@checker("param_count", _HINT)
def check_param_count(fn) -> str | None:
    """Check ``fn(config) -> int``: the number of parameters of ``GPT(config)``."""
    for c in _CONFIGS:
        got = call(fn, c)
        with torch.device("meta"):  # count without allocating 124M parameters
            want = GPT(c).num_params()
        if got == want:
            continue
        shape = (
            f"(vocab {c.vocab_size}, context {c.block_size}, {c.n_layer} layers, {c.n_embd} wide)"
        )
        mistakes = {
            "the output head shares its matrix with wte (weight tying): count it once":
                _count(c, lm_head=True),
            "biases are missing: each Linear(a, b) also has b biases": _count(c, biases=False),
            "the LayerNorms are missing: ln_1, ln_2 in each block and ln_f, each with a weight "
            "and a bias of n_embd": _count(c, norms=False),
            "the position embeddings are missing: wpe has block_size x n_embd":
                _count(c, positions=False),
            "the MLP's hidden layer is 4 x n_embd wide, not n_embd": _count(c, hidden=1),
        }  # fmt: skip
        for message, wrong in mistakes.items():
            if got == wrong:
                return f"{message} (for {shape} you said {got:,}, the model has {want:,})"
        if not isinstance(got, int):
            return f"return an int, got {type(got).__name__}"
        return f"for {shape} the model has {want:,} parameters, you said {got:,}"
    return None


def _random_block() -> tuple[Block, torch.Tensor]:
    """A block whose every weight (LayerNorms too) is random, so every mistake shows, and an
    input x (2, 5, 32); seeded."""
    torch.manual_seed(0)
    block = Block(_CONFIGS[0]).eval()
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return block, torch.randn(2, 5, 32)


@checker(
    "block_forward",
    "Two residual steps, attention then the MLP, each adding its output to x; each reads a "
    "LayerNorm-ed copy of x (pre-norm, as in GPT-2).",
    "Pre-norm: x = x + block.attn(block.ln_1(x))[0], then x = x + block.mlp(block.ln_2(x)).",
)
def check_block_forward(fn) -> str | None:
    """Check ``fn(block, x) -> (B, T, C)``: one decoder block's forward pass."""
    block, x = _random_block()
    with torch.no_grad():
        want, _ = block(x)
        got = call(fn, block, x.clone())
        if isinstance(got, tuple):
            got = got[0]
        if not isinstance(got, torch.Tensor) or got.shape != want.shape:
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            return f"return the block's output (B, T, C) = {tuple(want.shape)}, got {shape}"
        if torch.allclose(got, want, atol=1e-5):
            return None
        a = lambda h: block.attn(h)[0]  # noqa: E731
        h1 = x + a(block.ln_1(x))
        mistakes = {
            "that is post-norm (the original Transformer): GPT-2 normalises the input of each "
            "branch, x + attn(ln_1(x)), not the sum": block.ln_2(
                block.ln_1(x + a(x)) + block.mlp(block.ln_1(x + a(x)))),
            "the residual connections are missing: add each branch's output to x":
                block.mlp(block.ln_2(a(block.ln_1(x)))),
            "the MLP branch has no residual: x = x + mlp(ln_2(x))": block.mlp(block.ln_2(h1)),
            "the attention branch has no residual: x = x + attn(ln_1(x))":
                a(block.ln_1(x)) + block.mlp(block.ln_2(a(block.ln_1(x)))),
            "the MLP branch must use ln_2, not ln_1": h1 + block.mlp(block.ln_1(h1)),
            "the MLP must see the output of the attention step, not the block's input":
                h1 + block.mlp(block.ln_2(x)),
        }  # fmt: skip
    for message, wrong in mistakes.items():
        if torch.allclose(got, wrong, atol=1e-5):
            return message
    return f"output differs from the block's by up to {(got - want).abs().max():.3g}"


def _grad_ratio(forward) -> float | None:
    """The experiment: a 12-block stack at initialisation (Xavier, as the original Transformer
    was started), random inputs and targets, one backward pass; returns the gradient norm of the
    last block's weight matrices over the first block's (None: no gradient reached the first
    block). forward(block, x) runs one block."""
    torch.manual_seed(0)
    blocks = [Block(_CONFIGS[0]) for _ in range(12)]
    for m in (m for b in blocks for m in b.modules() if isinstance(m, torch.nn.Linear)):
        torch.nn.init.xavier_uniform_(m.weight)
    head = torch.nn.Linear(32, 100)
    x = torch.randn(4, 16, 32)
    for block in blocks:
        x = forward(block, x)
        x = x[0] if isinstance(x, tuple) else x
    logits = head(torch.nn.functional.layer_norm(x, (32,)))
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), torch.randint(0, 100, (64,))).backward()
    norms = []
    for b in blocks:
        grads = [p.grad.flatten() for p in b.parameters() if p.dim() == 2 and p.grad is not None]
        norms.append(torch.cat(grads).norm().item() if grads else 0.0)
    return norms[-1] / norms[0] if norms[0] else None


@checker(
    "post_norm_forward",
    "Post-norm, as in the original Transformer and GPT-1: each step adds its sublayer's output "
    "to its input first and then normalises the sum; the MLP step reads the attention step's "
    "normalised result.",
    "h = block.ln_1(x + block.attn(x)[0]), then return block.ln_2(h + block.mlp(h)).",
)
def check_post_norm(fn) -> str | None:
    """Check ``fn(block, x) -> (B, T, C)``: a course Block's parts run post-norm; then the
    experiment: in a 12-block post-norm stack the last block's weights get, relative to the
    first block's, clearly more gradient than in a pre-norm stack."""
    block, x = _random_block()
    with torch.no_grad():
        a = lambda h: block.attn(h)[0]  # noqa: E731
        h = block.ln_1(x + a(x))
        want = block.ln_2(h + block.mlp(h))
        got = call(fn, block, x.clone())
        got = got[0] if isinstance(got, tuple) else got
        if not isinstance(got, torch.Tensor) or got.shape != want.shape:
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            return f"return the block's output (B, T, C) = {tuple(want.shape)}, got {shape}"
        if not torch.allclose(got, want, atol=1e-5):
            pre = x + a(block.ln_1(x))
            sub = x + block.ln_1(a(x))
            no_res = block.ln_1(a(x))
            mistakes = {
                "that is pre-norm, GPT-2's block (x + attn(ln_1(x))): post-norm adds first and "
                "normalises the sum, ln_1(x + attn(x))": pre + block.mlp(block.ln_2(pre)),
                "the LayerNorm goes around the sum, ln_1(x + attn(x)), not around the sublayer "
                "alone, x + ln_1(attn(x))": sub + block.ln_2(block.mlp(sub)),
                "the residual connections are missing: add each sublayer's output to its input "
                "before normalising": block.ln_2(block.mlp(no_res)),
                "the MLP step has no residual: ln_2(h + mlp(h))": block.ln_2(block.mlp(h)),
                "the attention step has no residual: ln_1(x + attn(x))":
                    block.ln_2(no_res + block.mlp(no_res)),
                "the MLP step must read h, the attention step's output, not the block's input x":
                    block.ln_2(h + block.mlp(x)),
            }  # fmt: skip
            for message, wrong in mistakes.items():
                if torch.allclose(got, wrong, atol=1e-5):
                    return message
            return f"output differs from post-norm's by up to {(got - want).abs().max():.3g}"
    post, pre = _grad_ratio(fn), _grad_ratio(lambda block, x: block(x))
    if post is None:
        return "no gradient reached the first block's weights: compute with autograd on"
    print(f"last block / first block gradient norm: post-norm {post:.2f}, pre-norm {pre:.2f}")
    if post < 1.5 * pre:
        return f"post-norm's ratio {post:.2f} should clearly exceed pre-norm's {pre:.2f}"
    return None
