"""Sampling: from the model's scores to text, one token at a time. Lesson 06 derives this.

Each new token, from the logits (B, V) of the last position:

    logits / temperature          < 1 sharpens the distribution, > 1 flattens it
    top_k_filter(logits, k)       keep the k most likely tokens
    top_p_filter(logits, p)       keep the fewest most likely tokens that hold probability p
    softmax -> multinomial        draw one, from a torch.Generator: the same seed, the same text

``greedy=True`` takes the most likely token instead (no randomness, and prone to loops).

The context. The model sees at most ``block_size`` tokens. A prompt longer than that is cut
to its last ``block_size`` tokens; when the text grows past the context, the model goes on
from the last ``block_size // 2`` tokens (a window that jumps forward by half a context). Both
paths, with and without the KV cache, follow this same rule, so they give the same logits
(to float rounding) and the same tokens; with the cache each new token costs one position's
work instead of the whole window's, except at a jump, where the window is read again once.

    >>> import torch
    >>> from course_lib.model import GPT, GPTConfig
    >>> _ = torch.manual_seed(0)
    >>> model = GPT(GPTConfig(vocab_size=100, block_size=16, n_layer=2, n_head=2, n_embd=32))
    >>> ids = torch.tensor([[1, 2, 3]])                                 # (B, T) the prompt
    >>> out = generate(model, ids, 5, top_k=10, generator=torch.Generator().manual_seed(0))
    >>> out.shape                                                       # (B, T + new tokens)
    torch.Size([1, 8])
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from course_lib.errors import CourseError
from course_lib.model import GPT


def check_sampling(temperature: float = 1.0, top_k: int | None = None,
                   top_p: float | None = None) -> None:  # fmt: skip
    """Raise ValueError naming the bad sampling parameter and what to use instead."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise CourseError(f"temperature must be a number > 0, got {temperature!r}")
    if not temperature > 0:
        raise CourseError(
            f"temperature must be > 0, got {temperature}: for the most likely token every "
            f"time, pass greedy=True (--greedy) instead of temperature 0"
        )
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise CourseError(f"top_k must be an integer >= 1 (or None: no top-k), got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise CourseError(f"top_p must be in (0, 1], got {top_p!r} (1 or None: no top-p)")


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """logits (..., V) -> a copy where all but the k largest of each row are -inf.

    Tokens tied with the k-th largest are kept too (so a row may keep more than k).
    """
    check_sampling(top_k=k)
    k = min(k, logits.size(-1))
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (..., 1): the k-th largest
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """logits (..., V) -> a copy keeping, in each row, the fewest most likely tokens whose
    probabilities add up to at least p ("nucleus" sampling, Holtzman et al., 2019).

    The most likely token is always kept. A token is dropped when the tokens more likely than
    it already hold p: the nucleus is narrow where the model is sure, wide where it is not.
    """
    check_sampling(top_p=p)
    if p == 1:  # everything: the running sum may reach 1.0 early through rounding
        return logits.clone()
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs  # (..., V): the probability of the tokens before it
    drop_sorted = before >= p
    drop_sorted[..., 0] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def next_token(logits: Tensor, temperature: float = 1.0, top_k: int | None = None,
               top_p: float | None = None, generator: torch.Generator | None = None,
               greedy: bool = False) -> Tensor:  # fmt: skip
    """logits (B, V) of the last position -> the next token ids, (B, 1)."""
    if greedy:
        return logits.argmax(dim=-1, keepdim=True)
    check_sampling(temperature, top_k, top_p)
    logits = logits.float() / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None and top_p < 1:
        logits = top_p_filter(logits, top_p)
    probs = logits.softmax(dim=-1)
    if generator is not None and generator.device != probs.device:
        probs = probs.to(generator.device)  # a CPU generator draws on the CPU
    return torch.multinomial(probs, 1, generator=generator).to(logits.device)


@torch.no_grad()
def stream(
    model: GPT,
    ids: Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    greedy: bool = False,
    stop_token: int | None = None,
    use_cache: bool = True,
) -> Iterator[Tensor]:
    """Yield the new tokens one at a time, each (B, 1), as ``generate`` makes them.

    ids (B, T) is the prompt. ``stop_token`` (e.g. ``tokenizer.eot_id``): stop once every row
    has produced it (rows that stopped repeat it until all have). ``use_cache=False`` runs the
    whole window through the model for every token: the slow reference for the KV cache.
    """
    if not isinstance(ids, Tensor) or ids.dim() != 2:
        raise CourseError(f"ids must be a (B, T) tensor of token ids, got {_describe(ids)}: for "
                         f"one prompt use torch.tensor([tokenizer.encode(text)])")  # fmt: skip
    if ids.size(1) == 0:
        raise CourseError("the prompt is empty: give at least one token (e.g. a newline, or "
                         "the <|endoftext|> token, to start from nothing)")  # fmt: skip
    if (
        isinstance(max_new_tokens, bool)
        or not isinstance(max_new_tokens, int)
        or max_new_tokens < 0
    ):
        raise CourseError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if not greedy:
        check_sampling(temperature, top_k, top_p)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    seq = ids.to(device)
    block = model.config.block_size
    start = max(0, seq.size(1) - block)  # where the model's window begins
    cache, cached_from = None, None
    done = torch.zeros(seq.size(0), 1, dtype=torch.bool, device=device)
    try:
        for _ in range(max_new_tokens):
            if seq.size(1) - start > block:  # the window is full: go on from its second half
                start = seq.size(1) - block // 2
            if not use_cache:
                logits = model(seq[:, start:]).logits
            elif cached_from != start:  # a new window: read it whole, keep its keys and values
                cache, cached_from = model.new_kv_cache(), start
                logits = model(seq[:, start:], kv_cache=cache).logits
            else:  # the cache holds the window but its last token
                logits = model(seq[:, -1:], kv_cache=cache).logits
            new = next_token(logits[:, -1], temperature, top_k, top_p, generator, greedy)
            if stop_token is not None:
                new = new.masked_fill(done, stop_token)
                done |= new == stop_token
            seq = torch.cat([seq, new], dim=1)
            yield new
            if stop_token is not None and bool(done.all()):
                return
    finally:
        model.train(was_training)


def generate(
    model: GPT,
    ids: Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    greedy: bool = False,
    stop_token: int | None = None,
    use_cache: bool = True,
) -> Tensor:
    """ids (B, T) -> (B, T + n): the prompt and n <= max_new_tokens new tokens (fewer when
    every row reached ``stop_token``). The arguments are ``stream``'s."""
    new = list(stream(model, ids, max_new_tokens, temperature, top_k, top_p, generator,
                      greedy, stop_token, use_cache))  # fmt: skip
    return torch.cat([ids.to(new[0].device) if new else ids, *new], dim=1)


def _describe(x: object) -> str:
    return f"shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
