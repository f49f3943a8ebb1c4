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
