"""Scaled dot-product attention, the causal mask, multi-head attention and its KV cache.

Lesson 03 (attention) derives this, step by step.

Each token asks a question (its query), every token offers a key and a value; a token's output
is the average of the values, weighted by how well its query matches each key:
``softmax(q @ k^T / sqrt(d_k)) @ v`` ("Attention Is All You Need", Vaswani et al., 2017).
A GPT may only look back, so a causal mask hides the keys of later tokens.

Mask convention, everywhere in this module: a boolean mask, **True where attention is
allowed** (the same as the boolean ``attn_mask`` of ``torch.nn.functional.
scaled_dot_product_attention``). Beware: ``torch.nn.MultiheadAttention`` uses the opposite
(True = blocked), so pass it ``~causal_mask(T)``.

``MultiHeadAttention`` keeps GPT-2's layout and names (``c_attn`` holding q|k|v, ``c_proj``), so
Lesson 04 can load GPT-2's weights into it, and a ``KVCache`` so Lesson 06 can generate one
token at a time without recomputing the keys and values of the tokens before it.

    >>> import torch
    >>> from course_lib.attention import KVCache, MultiHeadAttention
    >>> attn = MultiHeadAttention(n_embd=64, n_head=4)
    >>> x = torch.randn(2, 10, 64)                    # (B, T, C)
    >>> y, _ = attn(x)                                # the fused fast path
    >>> y.shape
    torch.Size([2, 10, 64])
    >>> y, att = attn(x, need_weights=True)           # also the weights, for plots
    >>> att.shape                                     # (B, n_head, T, T)
    torch.Size([2, 4, 10, 10])
    >>> cache = KVCache()                             # generation: one token at a time
    >>> for t in range(10):
    ...     y_t, _ = attn(x[:, t : t + 1], kv_cache=cache)
    >>> cache.length, torch.allclose(y_t, y[:, -1:], atol=1e-6)
    (10, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from course_lib.errors import CourseError


def causal_mask(T: int, device: torch.device | str | None = None) -> Tensor:
    """The (T, T) boolean causal mask: ``mask[i, j]`` is True where query i may attend to key j.

    True on and below the diagonal (j <= i: a token sees itself and the tokens before it),
    False above it (the future).
    >>> causal_mask(3)
    tensor([[ True, False, False],
            [ True,  True, False],
            [ True,  True,  True]])
    """
    if T < 1:
        raise CourseError(f"T={T}, expected a sequence length >= 1")
    return torch.ones(T, T, dtype=torch.bool, device=device).tril()


def scaled_dot_product_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Attention with its steps in the open; returns ``(output, weights)``.

    q: (..., T_q, d_k), k: (..., T_k, d_k), v: (..., T_k, d_v); the leading dims (batch, heads)
    broadcast. mask: boolean, broadcastable to (..., T_q, T_k), True where attention is allowed.
    Returns output (..., T_q, d_v) and weights (..., T_q, T_k), each row of weights summing to 1.
    A query whose row of the mask is all False has nothing to attend to (its softmax would be
    0/0 = NaN), so that raises a ValueError rather than silently returning NaNs.
    """
    if q.dim() < 2 or k.dim() < 2 or v.dim() < 2:
        raise CourseError(
            f"q, k, v need at least 2 dims (..., T, d), got shapes {_shape(q)}, {_shape(k)}, "
            f"{_shape(v)}"
        )
    if q.size(-1) != k.size(-1):
        raise CourseError(
            f"q and k must have the same last dim d_k (a query is compared with each key), "
            f"got q {_shape(q)} and k {_shape(k)}"
        )
    if k.size(-2) != v.size(-2):
        raise CourseError(
            f"k and v must have the same length T_k (one value per key), "
            f"got k {_shape(k)} and v {_shape(v)}"
        )
    try:
        torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    except RuntimeError:
        raise CourseError(
            f"the leading (batch, head) dims of q, k, v do not broadcast: "
            f"q {_shape(q)}, k {_shape(k)}, v {_shape(v)}"
        ) from None

    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (..., T_q, T_k)
    if mask is not None:
        _check_mask(mask, scores.shape)
        # -inf becomes exactly 0 after softmax: hidden keys get no weight at all.
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = F.softmax(scores, dim=-1)  # (..., T_q, T_k)
    return weights @ v, weights  # (..., T_q, d_v), (..., T_q, T_k)


def _check_mask(mask: Tensor, scores_shape: torch.Size) -> None:
    if mask.dtype != torch.bool:
        raise CourseError(
            f"mask must be boolean with True = allowed, got dtype {mask.dtype}: build it with "
            f"causal_mask(T), or convert a 0/1 mask with mask.bool()"
        )
    try:
        fits = torch.broadcast_shapes(mask.shape, scores_shape) == scores_shape
    except RuntimeError:
        fits = False
    if not fits:
        raise CourseError(
            f"mask of shape {_shape(mask)} does not broadcast to the attention scores "
            f"(..., T_q, T_k) = {tuple(scores_shape)}: its last two dims must be (T_q, T_k) or 1"
        )
    if not mask.any(dim=-1).all():
        raise CourseError(
            "a row of the mask is all False: that query may attend to no key and its weights "
            "would be NaN. Every query needs at least one allowed key (a causal mask always "
            "allows the query's own position). Is the mask inverted? Here True = allowed."
        )


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def split_heads(x: Tensor, n_head: int) -> Tensor:
    """(B, T, C) -> (B, n_head, T, C // n_head): each head gets its own slice of the channels."""
    if x.dim() != 3 or n_head < 1 or x.size(-1) % n_head:
        raise CourseError(
            f"split_heads needs x of shape (B, T, C) with C divisible by n_head={n_head}, "
            f"got {_shape(x)}"
        )
    B, T, C = x.shape
    return x.view(B, T, n_head, C // n_head).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """(B, n_head, T, head_dim) -> (B, T, n_head * head_dim): the inverse of ``split_heads``."""
    if x.dim() != 4:
        raise CourseError(f"merge_heads needs x of shape (B, n_head, T, head_dim), got {_shape(x)}")
    B, n_head, T, head_dim = x.shape
    # contiguous: after the transpose the heads of one token are not adjacent in memory.
    return x.transpose(1, 2).contiguous().view(B, T, n_head * head_dim)


@dataclass
class KVCache:
    """The keys and values of the tokens seen so far, for one attention layer.

    k, v: (B, n_head, T_cached, head_dim), or None while empty. A GPT keeps one per layer.
    """

    k: Tensor | None = None
    v: Tensor | None = None

    @property
    def length(self) -> int:
        """T_cached, the number of tokens in the cache."""
        return 0 if self.k is None else self.k.size(2)

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Add the new tokens' k, v (B, n_head, T, head_dim); return all of them so far,
        (B, n_head, T_cached + T, head_dim) each."""
        if k.dim() != 4 or k.shape != v.shape:
            raise CourseError(
                f"k and v must both be (B, n_head, T, head_dim), got {_shape(k)} and {_shape(v)}"
            )
        if self.k is None or self.v is None:
            self.k, self.v = k, v
            return k, v
        if k.shape[:2] != self.k.shape[:2] or k.size(3) != self.k.size(3):
            raise CourseError(
                f"new k, v of shape {_shape(k)} do not fit the cache of shape {_shape(self.k)}: "
                f"(B, n_head, head_dim) must stay the same; start a new KVCache for a new batch"
            )
        self.k = torch.cat([self.k, k], dim=2)
        self.v = torch.cat([self.v, v], dim=2)
        return self.k, self.v


class MultiHeadAttention(nn.Module):
    """Multi-head (causal) self-attention, laid out like GPT-2's, so GPT-2's weights fit.

    ``c_attn`` projects each token to its query, key and value at once (q|k|v, in that order,
    like GPT-2 and ``nn.MultiheadAttention.in_proj_weight``); the heads attend independently
    in their own head_dim = n_embd // n_head channels; ``c_proj`` mixes the heads back.
    """

    def __init__(
        self,
        n_embd: int,
        n_head: int,
        dropout: float = 0.0,
        bias: bool = True,
        causal: bool = True,
        head_dim: int | None = None,
    ) -> None:
        super().__init__()
        if head_dim is None and (n_head < 1 or n_embd % n_head):
            divisors = ", ".join(str(d) for d in range(1, n_embd + 1) if n_embd % d == 0)
            raise CourseError(
                f"n_embd={n_embd} is not divisible by n_head={n_head}: pick n_head among the "
                f"divisors of n_embd ({divisors})"
            )
        self.n_embd = n_embd
        self.n_head = n_head
        # Heads are n_embd // n_head wide; pruning heads away (Lesson 08) keeps their width, so
        # the heads together may be narrower than the residual stream: n_head * head_dim <= C.
        self.head_dim = head_dim or n_embd // n_head
        self.dropout = dropout
        self.causal = causal
        inner = self.n_head * self.head_dim
        self.c_attn = nn.Linear(n_embd, 3 * inner, bias=bias)
        self.c_proj = nn.Linear(inner, n_embd, bias=bias)
        self.attn_dropout = nn.Dropout(dropout)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(
        self, x: Tensor, need_weights: bool = False, kv_cache: KVCache | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """x (B, T, C) -> (y (B, T, C), weights (B, n_head, T, T_total) or None).

        need_weights=False uses PyTorch's fused kernel and returns None for the weights;
        need_weights=True uses ``scaled_dot_product_attention`` above and returns them.
        With ``kv_cache``, x holds only the new tokens: their keys and values are appended to
        the cache and their queries attend to all T_total = T_cached + T keys, query t (at
        absolute position T_cached + t) seeing keys 0 .. T_cached + t.
        """
        if x.dim() != 3 or x.size(-1) != self.n_embd:
            raise CourseError(f"x must be (B, T, C) with C={self.n_embd}, got {_shape(x)}")
        T = x.size(1)
        q, k, v = self.c_attn(x).split(self.n_head * self.head_dim, dim=2)  # 3 x (B, T, nh * hd)
        q, k, v = (split_heads(t, self.n_head) for t in (q, k, v))  # (B, nh, T, hd)
        T_past = 0
        if kv_cache is not None:
            T_past = kv_cache.length
            k, v = kv_cache.append(k, v)  # (B, nh, T_total, hd), T_total = T_past + T

        mask = None
        if self.causal and T > 1 and (need_weights or T_past):
            # The new queries are the last T rows of the causal mask over all T_total tokens:
            # query t, at absolute position T_past + t, sees keys 0 .. T_past + t. Only those
            # rows are built. A single new query (one token of generation) needs no mask: every
            # key it sees is in its past.
            mask = torch.ones(T, k.size(2), dtype=torch.bool, device=x.device).tril(T_past)
        if need_weights:
            y, att = scaled_dot_product_attention(q, k, v, mask)  # att: (B, nh, T, T_total)
            if self.training and self.dropout > 0:
                # Drop weights as GPT-2 does, but return them undropped: they are for looking at.
                y = self.attn_dropout(att) @ v
        else:
            att = None
            # is_causal=True draws its triangle from the top left, right only when T_q == T_k;
            # with a cache the new queries sit at the bottom right, so they get the mask instead.
            y = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask,
                dropout_p=self.dropout if self.training else 0.0,
                is_causal=self.causal and not T_past,
            )
        y = merge_heads(y)  # (B, T, C): the heads side by side
        return self.resid_dropout(self.c_proj(y)), att
