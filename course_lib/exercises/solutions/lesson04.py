"""Solutions to the exercises of Lesson 04 (notebooks/04_decoder_stack.ipynb)."""

import torch

from course_lib.model import Block, GPTConfig


def param_count(config: GPTConfig) -> int:
    C, V, T, L = config.n_embd, config.vocab_size, config.block_size, config.n_layer
    attention = (C * 3 * C + 3 * C) + (C * C + C)  # c_attn (q|k|v) and c_proj
    mlp = (C * 4 * C + 4 * C) + (4 * C * C + C)  # c_fc and c_proj
    norms = 2 * (2 * C)  # ln_1 and ln_2: a weight and a bias each
    embeddings = V * C + T * C  # wte (shared with lm_head) and wpe
    return embeddings + L * (attention + mlp + norms) + 2 * C  # + ln_f


def block_forward(block: Block, x: torch.Tensor) -> torch.Tensor:
    x = x + block.attn(block.ln_1(x))[0]  # attn returns (output, weights or None)
    x = x + block.mlp(block.ln_2(x))
    return x


def post_norm_forward(block: Block, x: torch.Tensor) -> torch.Tensor:
    h = block.ln_1(x + block.attn(x)[0])  # add first, then normalise the sum
    return block.ln_2(h + block.mlp(h))
