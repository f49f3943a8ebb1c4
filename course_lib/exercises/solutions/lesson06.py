"""Solutions to the exercises of Lesson 06 (notebooks/06_sampling.ipynb)."""

import torch


def repetition_penalty(logits: torch.Tensor, ids: torch.Tensor, penalty: float) -> torch.Tensor:
    seen = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, ids, True)  # (B, V), once each
    # down for either sign: a positive logit shrinks towards 0, a negative one grows away from it
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)  # a new tensor; the tokens not seen keep theirs


def top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    if p >= 1:  # everything (the running sum may reach 1.0 early through rounding)
        return logits.clone()
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # most likely first
    probs = sorted_logits.softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs  # what the more likely tokens hold already
    drop_sorted = before >= p  # the top token has before = 0, so it always stays
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def min_p(logits: torch.Tensor, p_base: float) -> torch.Tensor:
    probs = logits.softmax(dim=-1)  # (B, V)
    threshold = p_base * probs.amax(dim=-1, keepdim=True)  # (B, 1): scaled by each row's top
    return logits.masked_fill(probs < threshold, float("-inf"))  # the top token always stays


def cached_attention_chunk(q, k, v, k_cache, v_cache):
    k_cache = torch.cat([k_cache, k], dim=1)  # (B, T + n, d): the new keys join
    v_cache = torch.cat([v_cache, v], dim=1)
    n, total = q.size(1), k_cache.size(1)
    scores = q @ k_cache.transpose(1, 2) / q.size(-1) ** 0.5  # (B, n, T + n)
    # new token i sits at position T + i: it sees the T cached keys and the new ones up to itself,
    # the bottom-right rows of the full causal mask
    sees = torch.ones(n, total, dtype=torch.bool).tril(total - n)
    out = scores.masked_fill(~sees, float("-inf")).softmax(dim=-1) @ v_cache  # (B, n, d)
    return out, k_cache, v_cache
