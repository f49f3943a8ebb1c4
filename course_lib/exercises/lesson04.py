"""Checkers for the exercises of Lesson 04 (notebooks/04_decoder_stack.ipynb)."""

from __future__ import annotations

import torch

from course_lib.exercises import call, checker
from course_lib.model import GPT, Block, GPTConfig

_CONFIGS = [
    GPTConfig(vocab_size=100, block_size=16, n_layer=2, n_head=2, n_embd=32),
    GPTConfig(vocab_size=2048, block_size=256, n_layer=4, n_head=4, n_embd=256),
    GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768),
    GPTConfig(vocab_size=2048, block_size=256, n_layer=4, n_head=4, n_embd=256, bias=False),
]


def _count(c: GPTConfig, lm_head: bool = False, biases: bool | None = None, norms: bool = True,
           positions: bool = True, hidden: int = 4, norm_biases: bool | None = None,
           ) -> int:  # fmt: skip
    """GPT(c)'s parameter count, or a typical miscount of it; biases=None follows c.bias."""
    C, H = c.n_embd, hidden * c.n_embd
    biases = c.bias if biases is None else biases
    norm_biases = c.bias if norm_biases is None else norm_biases
    norm = (2 * C if norm_biases else C) if norms else 0  # a weight, and a bias if any
    block = C * 3 * C + C * C + C * H + H * C + 2 * norm
    if biases:
        block += 3 * C + C + H + C
    total = c.vocab_size * C + c.n_layer * block + norm
    return total + (c.block_size * C if positions else 0) + (c.vocab_size * C if lm_head else 0)


_HINT = (
    "Count one block (ln_1, c_attn, c_proj, ln_2, c_fc, c_proj), times n_layer, plus wte, wpe "
    "and ln_f. A Linear(a, b) has a*b weights and b biases, a LayerNorm(C) C weights and C "
    "biases; config.bias=False removes every bias, the LayerNorms' too."
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
            f"(vocab {c.vocab_size}, context {c.block_size}, {c.n_layer} layers, {c.n_embd} wide"
            f"{', bias=False' if not c.bias else ''})"
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
            "config.bias=False removes every bias: the Linears have none, nor the LayerNorms":
                _count(c, biases=True, norm_biases=True),
            "config.bias=False removes the LayerNorms' biases too (nn.LayerNorm(C, bias=False) "
            "has only its C weights)": _count(c, norm_biases=True),
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


def _run(fn, block: Block, x: torch.Tensor) -> torch.Tensor | str:
    """The learner's output (a returned pair unpacked), or what is wrong with its type or shape."""
    try:
        got = call(fn, block, x.clone())
    except TypeError as err:
        if "tuple" not in str(err):
            raise
        return f"block.attn returns a pair (output, weights): take its [0] ({err})"
    got = got[0] if isinstance(got, tuple) else got
    if not isinstance(got, torch.Tensor) or got.shape != x.shape:
        shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
        return f"return the block's output (B, T, C) = {tuple(x.shape)}, got {shape}"
    return got


def _mistake(got: torch.Tensor, want: torch.Tensor, mistakes: dict[str, torch.Tensor]) -> str:
    """The first typical mistake that gives ``got``, or by how much it is off."""
    for message, wrong in mistakes.items():
        if torch.allclose(got, wrong, atol=1e-5):
            return message
    return f"output differs from the expected one by up to {(got - want).abs().max():.3g}"


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
        got = _run(fn, block, x)
        if isinstance(got, str):
            return got
        a, n = (lambda h: block.attn(h)[0]), block.ln_1(x)
        want = x + a(n) + block.mlp(n)
        if torch.allclose(got, want, atol=1e-5):
            return None
        mistakes = {
            "that is GPT-2's sequential block, where the MLP reads attention's result: in the "
            "parallel block both branches read ln_1(x), the block's own input": block(x)[0],
            "GPT-J and PaLM normalise once: the MLP reads ln_1(x) too, ln_2 is not used":
                x + a(n) + block.mlp(block.ln_2(x)),
            "the residual is missing: add both branches' outputs to x": a(n) + block.mlp(n),
            "the MLP branch is missing: add its output too": x + a(n),
            "the attention branch is missing: add its output too": x + block.mlp(n),
            "the branches read x unnormalised: both read ln_1(x)": x + a(x) + block.mlp(x),
        }  # fmt: skip
        return _mistake(got, want, mistakes)


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
        got = _run(fn, block, x)
        if isinstance(got, str):
            return got
        a = lambda h: block.attn(h)[0]  # noqa: E731
        h = a(block.ln_1(x))
        want = block.mlp(block.ln_2(h))
        if not torch.allclose(got, want, atol=1e-5):
            kept = x + a(block.ln_1(x))
            mistakes = {
                "that is the normal pre-norm block, with both residual connections: drop them, "
                "so that each sublayer's output replaces its input": block(x)[0],
                "the attention step still adds to x: drop its residual too":
                    block.mlp(block.ln_2(kept)),
                "the MLP step still adds to its input: drop its residual too":
                    h + block.mlp(block.ln_2(h)),
                "keep the LayerNorms: only the residual connections go": block.mlp(a(x)),
                "the MLP must read the attention step's output, not the block's input x":
                    block.mlp(block.ln_2(x)),
            }  # fmt: skip
            return _mistake(got, want, mistakes)
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
