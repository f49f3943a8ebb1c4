"""Checkers for the exercises of Lesson 07 (fine-tuning)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from course_lib.exercises import call, checker
from course_lib.finetune import LoRALinear

FORGETTING_BPC = 0.3  # how much worse the plays must get at 3e-3 (Section 2, at 3e-4: ~0.17)


def _layer(rank: int, alpha: float) -> LoRALinear:
    """A LoRA layer whose B is not zero, as after training, so every mistake shows."""
    g = torch.Generator().manual_seed(rank)
    lora = LoRALinear(nn.Linear(8, 6), rank, alpha)
    with torch.no_grad():
        for p in lora.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return lora


_LORA_HINT = (
    "y is what the frozen layer gives, plus Section 3's update scaled by alpha / rank; "
    "multiply x by A first, so that the (out, in) matrix B A is never formed."
)


@checker("lora_forward", _LORA_HINT)
def check_lora_forward(fn) -> str | None:
    """Check ``fn(x, W, b, A, B, alpha) -> y``: a LoRA layer's forward pass, x (..., in) ->
    y (..., out), W (out, in), b (out,), A (rank, in), B (out, rank)."""
    for rank, alpha in ((2, 4.0), (4, 4.0), (3, 1.5)):
        lora = _layer(rank, alpha)
        W, b = lora.base_layer.weight.detach(), lora.base_layer.bias.detach()
        A, B = lora.lora_A.weight.detach(), lora.lora_B.weight.detach()
        x = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(9))
        with torch.no_grad():
            want = lora(x)
            got = call(fn, x, W, b, A, B, alpha)
        where = f"(rank {rank}, alpha {alpha:g})"
        if not isinstance(got, Tensor) or got.shape != want.shape:
            shape = tuple(got.shape) if isinstance(got, Tensor) else type(got).__name__
            return f"return y of shape (B, T, out) = {tuple(want.shape)}, got {shape} {where}"
        if torch.allclose(got, want, atol=1e-5):
            continue
        base = x @ W.T + b
        update = x @ A.T @ B.T
        mistakes = {
            "the update is not scaled: multiply B A x by alpha / rank": base + update,
            "the update is scaled by alpha alone: divide by the rank too": base + alpha * update,
            "the scaling is upside down: alpha / rank, not rank / alpha":
                base + rank / alpha * update,
            "the frozen layer's output W x + b is missing: LoRA adds to it": alpha / rank * update,
            "the bias b of the frozen layer is missing": x @ W.T + alpha / rank * update,
        }  # fmt: skip
        for message, wrong in mistakes.items():
            if torch.allclose(got, wrong, atol=1e-5):
                return f"{message} {where}"
        gap = (got - want).abs().max()
        return f"y differs from the LoRA layer's output by up to {gap:.4f} {where}"
    return None


@checker("lora_init", "A like nn.Linear(in, rank)'s weight (small random numbers), B all "
         "zeros: then B A = 0 and the adapted model starts as the base model.")  # fmt: skip
def check_lora_init(fn) -> str | None:
    """Check ``fn(in_features, out_features, rank) -> (A, B)``: the adapter's starting values,
    A (rank, in) random, B (out, rank) zero."""
    for n_in, n_out, rank in ((32, 96, 4), (16, 8, 2)):
        got = call(fn, n_in, n_out, rank)
        if not isinstance(got, tuple) or len(got) != 2:
            return f"return a pair (A, B), got {type(got).__name__}"
        A, B = got
        if tuple(A.shape) != (rank, n_in) or tuple(B.shape) != (n_out, rank):
            return (f"A must be (rank, in) = {(rank, n_in)} and B (out, rank) = "
                    f"{(n_out, rank)}, got {tuple(A.shape)} and {tuple(B.shape)}")  # fmt: skip
        if B.abs().sum() != 0 and A.abs().sum() == 0:
            return "A and B are swapped: B starts at zero, A at random values"
        if B.abs().sum() != 0:
            return ("B must start at zero, so that B A = 0: the adapted model starts exactly "
                    "where the base model is")  # fmt: skip
        if A.abs().sum() == 0:
            return (
                "A must not be zero too: with A = B = 0 both gradients are zero (B's is the "
                "error times A x, A's is B's transpose times the error): it never learns"
            )
        if A.abs().max() > 1:
            return (
                f"A is large (up to {A.abs().max():.2f}): start it small, like an nn.Linear's "
                f"weight (uniform within 1/sqrt(in) = {n_in**-0.5:.3f})"
            )
    return None


@checker("last_token", "Row b has lengths[b] real tokens, so its last one sits at position "
         "lengths[b] - 1; pick one position per row with a pair of index tensors.")  # fmt: skip
def check_last_token(fn) -> str | None:
    """Check ``fn(hidden, lengths) -> (B, C)``: each sequence's hidden state at its last real
    token; hidden (B, T, C), lengths (B,) the real tokens of each row (the rest is padding)."""
    g = torch.Generator().manual_seed(7)
    hidden = torch.randn(3, 6, 4, generator=g)
    lengths = torch.tensor([6, 2, 4])
    want = hidden[torch.arange(3), lengths - 1]
    got = call(fn, hidden.clone(), lengths.clone())
    if not isinstance(got, Tensor) or got.shape != want.shape:
        shape = tuple(got.shape) if isinstance(got, Tensor) else type(got).__name__
        return f"return (B, C) = {tuple(want.shape)}, one vector per sequence, got {shape}"
    if torch.equal(got, want):
        return None
    mistakes = {
        "that is the last position of every row, padding included: a padded row ends earlier, "
        "at lengths[b] - 1": hidden[:, -1],
        "off by one: row b's last real token is at position lengths[b] - 1 (positions count "
        "from 0)": hidden[torch.arange(3), lengths.clamp(max=5)],
        "that is the first token of each row: in a causal model only the last real token has "
        "seen the whole passage": hidden[:, 0],
        "that is the mean over all positions, padding included": hidden.mean(1),
    }  # fmt: skip
    for message, wrong in mistakes.items():
        if torch.allclose(got, wrong):
            return message
    return "some rows differ from the hidden state at position lengths[b] - 1"


@checker(
    "too_fast",
    "Train the copy as Section 2 did, for 100 steps, with a learning rate "
    "ten times larger; return it, and compare its plays with Section 2's.",
)
def check_forgetting(fn) -> str | None:
    """Check the experiment ``fn(model, poems) -> model``: full fine-tuning of the course model
    on the poems ({"train", "val", "test"} token ids) at ten times Section 2's learning rate.
    It passes when every weight moved and the held-out plays got clearly worse than Section 2's
    run left them, and prints what it measured."""
    from course_lib.course_model import load_or_train
    from course_lib.metrics import bits_per_char, evaluate_all
    from course_lib.model import GPT
    from course_lib.poems import plays_sample, poem_splits

    course = load_or_train(progress=False)
    fast = course.tokenizer.fast()
    poems = {s: torch.tensor(fast.encode(t).ids) for s, t in poem_splits().items()}
    text = plays_sample()
    plays = torch.tensor(fast.encode(text).ids)

    def bpc(model: nn.Module, ids: Tensor, chars: int) -> float:
        loss = evaluate_all(model, ids, model.config.block_size)
        return bits_per_char(loss, len(ids), chars)

    def plays_bpc(model: nn.Module) -> float:
        return bpc(model, plays, len(text))

    def poems_bpc(model: nn.Module) -> float:
        return bpc(model, poems["test"], len(poem_splits()["test"]))

    model = call(fn, load_or_train(progress=False).model, poems)
    if not isinstance(model, GPT):
        return f"return the fine-tuned model (a GPT), got {type(model).__name__}"
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        return "that model has LoRA adapters: this experiment fine-tunes every weight, fully"
    moved = [not torch.equal(p, q) for p, q in zip(model.parameters(), course.model.parameters())]
    if not all(moved):
        return (
            f"{moved.count(False)} of {len(moved)} weight tensors did not move: train the "
            f"copy you were given (train(model, poems, config)) and return it"
        )
    rise = plays_bpc(model) - plays_bpc(course.model)
    better = poems_bpc(course.model) - poems_bpc(model)
    print(
        f"your run: test sonnets {better:+.3f} bits/char better, held-out plays {rise:+.3f} "
        f"worse (Section 2's run: about +0.15 and +0.17)"
    )
    if rise < FORGETTING_BPC:
        return (
            f"the plays got only {rise:.3f} bits/char worse: was the learning rate 3e-3, ten "
            f"times Section 2's 3e-4 (TrainConfig(lr=3e-3, min_lr=3e-4, ...))?"
        )
    return None
