"""Solutions to the exercises of Lesson 04 (notebooks/04_decoder_stack.ipynb)."""

import torch

from course_lib.model import Block, GPTConfig


def param_count(config: GPTConfig, tied: bool = True) -> int:
    C, V, T, L = config.n_embd, config.vocab_size, config.block_size, config.n_layer
    b = 1 if config.bias else 0  # bias=False: no biases anywhere, the LayerNorms' included

    def linear(n_in: int, n_out: int) -> int:
        return n_in * n_out + b * n_out

    norm = C + b * C  # a weight, and a bias if any
    attention = linear(C, 3 * C) + linear(C, C)  # c_attn (q|k|v) and c_proj
    mlp = linear(C, 4 * C) + linear(4 * C, C)  # c_fc and c_proj
    positions = T * C if config.positions == "learned" else 0  # a sinusoidal table is computed
    head = 0 if tied else V * C  # tied: the head is wte; untied: a matrix of its own, no bias
    return V * C + positions + L * (norm + attention + norm + mlp) + norm + head  # ... ln_f


def parallel_forward(block: Block, x: torch.Tensor) -> torch.Tensor:
    n = block.ln_1(x)  # one LayerNorm feeds both branches (GPT-J, PaLM); ln_2 goes unused
    return x + block.attn(n)[0] + block.mlp(n)  # attn returns (output, weights or None)


def no_residual_forward(block: Block, x: torch.Tensor) -> torch.Tensor:
    h = block.attn(block.ln_1(x))[0]  # each output replaces its input: nothing is added back
    return block.mlp(block.ln_2(h))
