"""GPT-2 in Hugging Face ``transformers`` and the course's GPT, converted both ways, exactly.

Lesson 04 (the decoder stack) uses this to check the course model against GPT-2
(``GPT.from_hf``, ``GPT.to_hf`` call these functions); Lesson 06 samples the course model
through ``transformers``. The names are the same on both sides; GPT-2's ``Conv1D`` weights
(in, out) are the transpose of ``nn.Linear``'s (out, in), the one twist.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from course_lib.changes import changes_shapes
from course_lib.errors import CourseError
from course_lib.model import GPT, PROJECTIONS, GPTConfig

if TYPE_CHECKING:  # transformers is imported only when converting: it takes seconds to load.
    from transformers import GPT2LMHeadModel

# GPT-2's Conv1D layers store their weight as (in, out), the transpose of nn.Linear's (out, in).
CONV1D_WEIGHTS = tuple(f"{name}.weight" for name in PROJECTIONS)  # every block's projections


def from_hf(hf_model: GPT2LMHeadModel) -> GPT:
    """A GPT with the weights of a ``transformers.GPT2LMHeadModel`` (e.g. ``from_pretrained(
    "gpt2")``), on its device, in its dtype and train/eval mode.

    The parameter names are the same on both sides; GPT-2's Conv1D weights (in, out) are
    transposed into nn.Linear's (out, in). The fused q|k|v ``c_attn`` keeps its layout (q, k,
    v stacked along the output, heads side by side in each), so it needs no reshuffling.
    """
    from transformers import GPT2LMHeadModel

    if not isinstance(hf_model, GPT2LMHeadModel):
        raise CourseError(
            f"from_hf needs a transformers.GPT2LMHeadModel, got {type(hf_model).__name__}"
        )
    hc = hf_model.config
    unsupported = {
        "n_inner": (hc.n_inner, (None, 4 * hc.n_embd)),
        "activation_function": (hc.activation_function, ("gelu_new", "gelu_pytorch_tanh")),
        "scale_attn_weights": (hc.scale_attn_weights, (True,)),
        "scale_attn_by_inverse_layer_idx": (hc.scale_attn_by_inverse_layer_idx, (False,)),
        "add_cross_attention": (hc.add_cross_attention, (False,)),
        "tie_word_embeddings": (hc.tie_word_embeddings, (True,)),
    }
    for name, (value, allowed) in unsupported.items():
        if value not in allowed:
            raise CourseError(f"config.{name}={value!r} is not GPT-2's: expected one of {allowed}")
    dropouts = {hc.resid_pdrop, hc.embd_pdrop, hc.attn_pdrop}
    if len(dropouts) > 1:
        raise CourseError(
            f"resid_pdrop={hc.resid_pdrop}, embd_pdrop={hc.embd_pdrop}, attn_pdrop="
            f"{hc.attn_pdrop}: the course model has one dropout rate; set the three equal"
        )
    config = GPTConfig(
        vocab_size=hc.vocab_size,
        block_size=hc.n_positions,
        n_layer=hc.n_layer,
        n_head=hc.n_head,
        n_embd=hc.n_embd,
        dropout=float(dropouts.pop()),
        bias=True,
        positions="learned",
        layer_norm_epsilon=hc.layer_norm_epsilon,
    )
    model = GPT(config)
    sd = {k: v.t() if k.endswith(CONV1D_WEIGHTS) else v for k, v in hf_model.state_dict().items()}
    model.load_state_dict(sd, strict=True)  # strict: every name must match, both ways
    weight = hf_model.lm_head.weight
    return model.to(device=weight.device, dtype=weight.dtype).train(hf_model.training)


@torch.no_grad()
def to_hf(model: GPT) -> GPT2LMHeadModel:
    """This model as a ``transformers.GPT2LMHeadModel`` (same weights, device, dtype, mode).

    GPT-2 has learned positions and biases everywhere, so only such a model converts. The
    Hugging Face config gets no bos/eos token ids: those belong to a tokenizer, not a model.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    c = model.config
    if changed := [ch for ch in model.changes if changes_shapes(ch)]:
        done = ", ".join(ch["change"] for ch in changed)
        raise CourseError(
            f"to_hf converts GPT-2's architecture, and this model was changed since it was "
            f"built ({done}): GPT2LMHeadModel has no place for that. Undo the change first "
            f"(merge a LoRA adapter into the weights, dequantize quantized layers); pruned "
            f"heads and neurons cannot be undone (GPT-2 has the same width in every layer): "
            f"sample and evaluate such a model with course_lib, and save it with "
            f"save_checkpoint, which records the changes"
        )
    if c.positions != "learned" or not c.bias:
        raise CourseError(
            f"to_hf needs positions='learned' and bias=True (GPT-2's layout), got "
            f"positions={c.positions!r}, bias={c.bias}: a model with other settings has no "
            f"GPT2LMHeadModel equivalent"
        )
    hc = GPT2Config(
        vocab_size=c.vocab_size,
        n_positions=c.block_size,
        n_ctx=c.block_size,  # the old name of n_positions, which older readers still look for
        n_embd=c.n_embd,
        n_layer=c.n_layer,
        n_head=c.n_head,
        n_inner=None,  # = 4 * n_embd
        activation_function="gelu_new",  # GELU, tanh approximation
        resid_pdrop=c.dropout,
        embd_pdrop=c.dropout,
        attn_pdrop=c.dropout,
        layer_norm_epsilon=c.layer_norm_epsilon,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=None,
    )
    hf_model = GPT2LMHeadModel(hc)
    # transformers 5 looks the loss up by the class name, finds none for "GPT2LMHeadModel",
    # warns and falls back to the causal-LM loss: name that loss to skip the warning.
    hf_model.loss_type = "ForCausalLM"
    sd = {k: v.t() if k.endswith(CONV1D_WEIGHTS) else v for k, v in model.state_dict().items()}
    hf_model.load_state_dict(sd, strict=True)
    weight = model.lm_head.weight
    return hf_model.to(device=weight.device, dtype=weight.dtype).train(model.training)
