"""Solutions to the exercises of Lesson 05 (notebooks/05_pretraining.ipynb)."""

import torch

from course_lib.model import GPT


def accumulated_step(
    model: GPT,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    micro_batches: int,
    grad_clip: float,
) -> float:
    optimizer.zero_grad(set_to_none=True)  # once per update: the last batch's gradients go
    total = 0.0
    for xm, ym in zip(x.chunk(micro_batches), y.chunk(micro_batches)):
        loss = model(xm, ym).loss / micro_batches  # the sum of these is the batch's mean loss
        loss.backward()  # adds to the gradients of the micro-batches before
        total += loss.item()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)  # the whole batch's gradient
    optimizer.step()
    return total


def batch_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    log_probs = torch.log_softmax(logits, dim=-1)  # (B, T, V): normalised scores
    picked = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T): log p(target)
    return -picked.mean()  # nats per token


def dropout(x: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    keep = torch.rand(x.shape, generator=generator) >= p  # True with probability 1 - p
    return x * keep / (1 - p)  # survivors scaled up: the average stays x
