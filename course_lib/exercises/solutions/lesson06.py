"""Solutions to the exercises of Lesson 06 (notebooks/06_sampling.ipynb)."""

import torch


def top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    k = min(k, logits.size(-1))  # asking for more tokens than there are keeps them all
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1): the k-th largest of each row
    return logits.masked_fill(logits < kth, float("-inf"))  # a new tensor; ties with kth stay


def top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    if p >= 1:  # everything (the running sum may reach 1.0 early through rounding)
        return logits.clone()
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # most likely first
    probs = sorted_logits.softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs  # what the more likely tokens hold already
    drop_sorted = before >= p  # the top token has before = 0, so it always stays
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # vocabulary order
    return logits.masked_fill(drop, float("-inf"))


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


def nucleus_sizes(logits, p):
    probs = logits.softmax(dim=-1).sort(dim=-1, descending=True).values  # (T, V), likeliest first
    before = probs.cumsum(dim=-1) - probs  # what the likelier tokens hold already
    return (before < p).sum(dim=-1)  # a token is kept while the ones before it hold < p
