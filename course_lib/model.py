"""The GPT: token and position embeddings, a stack of decoder blocks, and a language-model head.

Lesson 04 (the decoder stack) derives this, step by step.

The architecture is GPT-2's (Radford et al., 2019), read in the order the data flows:

    idx (B, T) token ids
     -> wte(idx) + positions            (B, T, C)  what each token is, and where it is
     -> drop
     -> h[0] .. h[n_layer - 1]          (B, T, C)  each Block: x = x + attn(ln_1(x))
                                                              x = x + mlp(ln_2(x))
     -> ln_f -> lm_head                 (B, T, vocab_size)  a score for every next token

The names are GPT-2's (and so Hugging Face's: ``transformer.wte``, ``transformer.h.0.attn.c_attn``,
..., ``lm_head``), which is why ``GPT.from_hf`` and ``GPT.to_hf`` can move weights across with
only one twist: GPT-2 stores its projections as ``Conv1D`` weights of shape (in, out), the
transpose of ``nn.Linear``'s (out, in). Every projection here is a plain ``nn.Linear``, so later
lessons can wrap one (LoRA in Lesson 07, int8 in Lesson 08) by assigning to it.

    >>> import torch
    >>> from course_lib.model import GPT, GPTConfig
    >>> _ = torch.manual_seed(0)
    >>> config = GPTConfig(vocab_size=100, block_size=16, n_layer=2, n_head=2, n_embd=32)
    >>> model = GPT(config).eval()
    >>> idx = torch.randint(0, 100, (2, 8))                 # (B, T) token ids
    >>> logits, loss, _ = model(idx[:, :-1], targets=idx[:, 1:])
    >>> logits.shape                                        # (B, T, vocab_size)
    torch.Size([2, 7, 100])
    >>> round(loss.item(), 1)                               # untrained: about ln(100) = 4.6
    4.6
    >>> out = model(idx, need_weights=True)                 # attention maps, one per layer
    >>> len(out.attentions), out.attentions[0].shape        # (B, n_head, T, T)
    (2, torch.Size([2, 2, 8, 8]))
    >>> model.num_params()
    29184
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from course_lib.attention import KVCache, MultiHeadAttention
from course_lib.data import VOCAB_SIZE
from course_lib.positional import sinusoidal_encoding

if TYPE_CHECKING:  # transformers is imported only when converting: it takes seconds to load.
    from transformers import GPT2LMHeadModel

POSITIONS = ("learned", "sinusoidal")
# Targets equal to this are skipped by the loss (the default of F.cross_entropy and of
# Hugging Face's labels), e.g. to train only on the answer part of a sequence.
IGNORE_INDEX = -100
# param_counts: which part a parameter belongs to, by a piece of its name (else "embeddings").
PARTS = ((".attn.", "attention"), (".mlp.", "mlp"), ("ln_", "layernorms"))
# GPT-2's Conv1D layers store their weight as (in, out), the transpose of nn.Linear's (out, in).
CONV1D_WEIGHTS = (
    "attn.c_attn.weight",
    "attn.c_proj.weight",
    "mlp.c_fc.weight",
    "mlp.c_proj.weight",
)


@dataclass
class GPTConfig:
    """The shape of a GPT. ``C = n_embd`` is the width of the residual stream.

    vocab_size: number of token ids; block_size: the context, the most tokens the model sees at
    once; n_layer: blocks; n_head: attention heads per block, each n_embd // n_head wide;
    dropout: one rate for embeddings, attention weights and residual branches (GPT-2's
    embd_pdrop = attn_pdrop = resid_pdrop); bias: biases in the Linear layers and LayerNorms;
    positions: "learned" (GPT-2's nn.Embedding) or "sinusoidal" (a fixed table, Vaswani et al.).
    """

    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    n_embd: int
    dropout: float = 0.0
    bias: bool = True
    positions: str = "learned"
    layer_norm_epsilon: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}, expected a positive integer (>= 1)")
        if self.n_embd % self.n_head:
            divisors = ", ".join(str(d) for d in range(1, self.n_embd + 1) if self.n_embd % d == 0)
            lower = self.n_embd - self.n_embd % self.n_head
            raise ValueError(
                f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}: each head gets "
                f"n_embd // n_head channels. Pick n_head among the divisors of n_embd "
                f"({divisors}) or n_embd a multiple of n_head (e.g. {lower or self.n_head} or "
                f"{lower + self.n_head})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout}, expected a probability in [0, 1)")
        if self.positions not in POSITIONS:
            raise ValueError(f"positions={self.positions!r}, expected one of {POSITIONS}")
        if self.positions == "sinusoidal" and self.n_embd % 2:
            raise ValueError(
                f"positions='sinusoidal' needs an even n_embd (each sine has its cosine), got "
                f"n_embd={self.n_embd}: use n_embd={self.n_embd + 1} or positions='learned'"
            )
        if not self.layer_norm_epsilon > 0:
            raise ValueError(f"layer_norm_epsilon={self.layer_norm_epsilon}, expected > 0")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def course(cls, **overrides: Any) -> GPTConfig:
        """The course model: 873,600 parameters, trained on a 2-core CPU in 7.5 minutes.

        The shape that reached the best held-out bits per character in that time, among those
        benchmarks/sweep_course_model.py tried (Lesson 05; benchmarks/README.md has the table).
        """
        shape = dict(vocab_size=VOCAB_SIZE, block_size=128, n_layer=3, n_head=4, n_embd=128)
        return cls(**{**shape, **overrides})

    @classmethod
    def gpt2(cls, **overrides: Any) -> GPTConfig:
        """GPT-2 small, the 124M model: 124,439,808 parameters (the tied lm_head counted once)."""
        shape = dict(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)
        return cls(**{**shape, **overrides})


class MLP(nn.Module):
    """The position-wise feed-forward network: (B, T, C) -> (B, T, 4C) -> (B, T, C).

    Attention moves information between tokens; the MLP then works on each token by itself.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        # GPT-2 used the tanh approximation of GELU (it was faster in 2018); keeping it is what
        # makes the logits match GPT-2's to the last digits ("gelu_new" in Hugging Face).
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, T, C) -> (B, T, C)."""
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """One decoder block: attention, then the MLP, each on a LayerNorm-ed copy of the residual
    stream and each adding its result back to it (pre-LayerNorm, as in GPT-2).

    Pre-LN keeps a clean path from the embeddings to the output, x + f(x) + g(x + f(x)) + ...,
    so gradients reach the first layers undamped, however deep the stack.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        eps, bias = config.layer_norm_epsilon, config.bias
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=eps, bias=bias)
        self.attn = MultiHeadAttention(config.n_embd, config.n_head, config.dropout, bias)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=eps, bias=bias)
        self.mlp = MLP(config)

    def forward(
        self, x: Tensor, need_weights: bool = False, kv_cache: KVCache | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """x (B, T, C) -> (x (B, T, C), attention weights (B, n_head, T, T_total) or None)."""
        a, att = self.attn(self.ln_1(x), need_weights=need_weights, kv_cache=kv_cache)
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, att


class GPTOutput(NamedTuple):
    """What ``GPT.forward`` returns; unpack it (``logits, loss, _ = model(idx, targets)``) or
    read its fields (``model(idx).logits``)."""

    logits: Tensor  # (B, T, vocab_size): unnormalised scores for the token after each position
    loss: Tensor | None  # scalar mean cross-entropy, when targets were given
    attentions: list[Tensor] | None  # n_layer x (B, n_head, T, T_total), when need_weights


class GPT(nn.Module):
    """GPT-2's architecture, learned or sinusoidal positions, lm_head tied to the token embedding.

    ``scaled_residual_init=True`` (GPT-2's choice) draws the two projections that write into the
    residual stream, ``attn.c_proj`` and ``mlp.c_proj``, with std 0.02 / sqrt(2 * n_layer):
    the stream adds 2 * n_layer such branches, so their sum keeps about the scale of one.
    """

    def __init__(self, config: GPTConfig, scaled_residual_init: bool = True) -> None:
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
                ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias),
            )
        )
        if config.positions == "learned":
            self.transformer["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        else:
            # A fixed table: a buffer moves with .to(device) but is no parameter (never trained),
            # and non-persistent, so it stays out of the state_dict (it is recomputed, not saved).
            # Its values are of order 1, far above the token embeddings' 0.02: the first
            # LayerNorm sees mostly position at first, until training grows the embeddings.
            pe = sinusoidal_encoding(config.block_size, config.n_embd)  # (block_size, C)
            self.register_buffer("pe", pe, persistent=False)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying: the same (vocab_size, C) matrix reads tokens in and scores them out
        # (Press & Wolf, 2017). It saves vocab_size * C parameters, 38.6M of GPT-2's 124M.
        self.transformer.wte.weight = self.lm_head.weight
        self.init_weights(scaled_residual_init)

    @torch.no_grad()
    def init_weights(self, scaled_residual_init: bool = True) -> None:
        """GPT-2's initialisation: N(0, 0.02) weights, zero biases, LayerNorms at identity."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, nn.LayerNorm):
                module.reset_parameters()
        if scaled_residual_init:
            std = 0.02 / math.sqrt(2 * self.config.n_layer)
            for block in self.transformer.h:
                nn.init.normal_(block.attn.c_proj.weight, mean=0.0, std=std)
                nn.init.normal_(block.mlp.c_proj.weight, mean=0.0, std=std)

    def new_kv_cache(self) -> list[KVCache]:
        """An empty KV cache for ``forward(..., kv_cache=...)``: one KVCache per layer."""
        return [KVCache() for _ in range(self.config.n_layer)]

    def forward(
        self,
        idx: Tensor,
        targets: Tensor | None = None,
        need_weights: bool = False,
        kv_cache: list[KVCache] | None = None,
    ) -> GPTOutput:
        """idx (B, T) token ids -> GPTOutput(logits (B, T, vocab_size), loss, attentions).

        targets (B, T): ``targets[b, t]`` is the token that follows ``idx[b, t]``, i.e. the
        sequence shifted left by one (``idx, targets = seq[:, :-1], seq[:, 1:]``, what
        ``course_lib.data.get_batch`` returns). The loss is the cross-entropy averaged over all
        B * T positions, skipping targets equal to IGNORE_INDEX (-100). Hugging Face's ``labels``
        are unshifted instead (it shifts inside): its ``labels=seq`` is our ``targets=seq[:, 1:]``.

        need_weights=True also returns the attention weights of every layer, n_layer tensors of
        (B, n_head, T, T_total), for plots and bertviz; otherwise attention takes the fused path.

        kv_cache (from ``new_kv_cache()``): idx holds only the new tokens; the keys and values of
        the T_cached tokens before them come from the cache, which the call extends by T. The new
        tokens sit at positions T_cached .. T_cached + T - 1, and T_total = T_cached + T.
        """
        B, T = self._check_idx(idx)
        T_past = self._check_kv_cache(kv_cache, T)
        if targets is not None:
            self._check_targets(targets, idx)

        pos = torch.arange(T_past, T_past + T, device=idx.device)  # (T,)
        tok_emb = self.transformer.wte(idx)  # (B, T, C)
        learned = self.config.positions == "learned"
        pos_emb = self.transformer.wpe(pos) if learned else self.pe[pos]  # (T, C)
        x = self.transformer.drop(tok_emb + pos_emb)  # (B, T, C): (T, C) broadcasts over B

        attentions = []
        for i, block in enumerate(self.transformer.h):
            x, att = block(x, need_weights, None if kv_cache is None else kv_cache[i])
            attentions.append(att)
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x)  # (B, T, vocab_size)

        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.view(B * T, -1), targets.reshape(B * T), ignore_index=IGNORE_INDEX
            )
        return GPTOutput(logits, loss, attentions if need_weights else None)

    def _check_idx(self, idx: Tensor) -> tuple[int, int]:
        if (
            not isinstance(idx, Tensor)
            or idx.dim() != 2
            or idx.dtype not in (torch.long, torch.int)
        ):
            got = f"shape {tuple(idx.shape)}, dtype {idx.dtype}" if isinstance(idx, Tensor) else idx
            raise ValueError(
                f"idx must be a 2-D tensor of integer token ids, (B, T), got {got}: for one "
                f"sequence use idx[None], for a float tensor idx.long()"
            )
        B, T = idx.shape
        if T < 1:
            raise ValueError(f"idx has shape {(B, T)}: give at least one token per sequence")
        block_size = self.config.block_size
        if idx.size(1) > block_size:
            raise ValueError(
                f"sequence of {T} tokens is longer than the context block_size={block_size}: "
                f"crop to the last {block_size} tokens, idx[:, -{block_size}:]"
            )
        V = self.config.vocab_size
        low, high = idx.min().item(), idx.max().item()
        if low < 0 or high >= V:
            raise ValueError(
                f"token id {low if low < 0 else high} is outside the vocabulary [0, {V}) of this "
                f"model (vocab_size={V}): encode with the tokenizer the model was built for"
            )
        return B, T

    def _check_kv_cache(self, kv_cache: list[KVCache] | None, T: int) -> int:
        if kv_cache is None:
            return 0
        n_layer = self.config.n_layer
        if not isinstance(kv_cache, (list, tuple)) or len(kv_cache) != n_layer:
            raise ValueError(
                f"kv_cache must be a list of {n_layer} KVCache, one per layer: use "
                f"model.new_kv_cache()"
            )
        T_past = kv_cache[0].length
        if T_past + T > self.config.block_size:
            raise ValueError(
                f"the KV cache holds {T_past} tokens and {T} more make {T_past + T}, longer than "
                f"the context block_size={self.config.block_size}: start a new cache and feed "
                f"the last {self.config.block_size} tokens or fewer"
            )
        return T_past

    def _check_targets(self, targets: Tensor, idx: Tensor) -> None:
        if not isinstance(targets, Tensor) or targets.shape != idx.shape:
            got = tuple(targets.shape) if isinstance(targets, Tensor) else targets
            raise ValueError(
                f"targets must have the shape of idx, (B, T) = {tuple(idx.shape)}, got {got}: "
                f"targets[b, t] is the token after idx[b, t] (idx = seq[:, :-1], "
                f"targets = seq[:, 1:])"
            )
        if targets.dtype not in (torch.long, torch.int):
            raise ValueError(f"targets must be integer token ids, got dtype {targets.dtype}")
        V = self.config.vocab_size
        bad = targets[(targets != IGNORE_INDEX) & ((targets < 0) | (targets >= V))]
        if bad.numel():
            raise ValueError(
                f"target {bad[0].item()} is outside the vocabulary [0, {V}) (vocab_size={V}); "
                f"only {IGNORE_INDEX} may lie outside it, to skip a position in the loss"
            )

    # --- counting parameters ---------------------------------------------------------------------

    def num_params(self, non_embedding: bool = False) -> int:
        """The number of parameters, the tied wte/lm_head matrix counted once.

        non_embedding=True leaves out the token and position embeddings, the count N that
        scaling laws use (Kaplan et al., 2020): GPT-2 small has 124,439,808, of which
        85,056,000 are non-embedding.
        """
        counts = self.param_counts()
        return sum(counts.values()) - (counts["embeddings"] if non_embedding else 0)

    def param_counts(self) -> dict[str, int]:
        """Parameters per part: embeddings (wte, wpe; lm_head is wte), attention, mlp,
        layernorms. They add up to ``num_params()``."""
        counts = dict(embeddings=0, attention=0, mlp=0, layernorms=0)
        for name, p in self.named_parameters():  # each shared parameter once
            part = next((part for key, part in PARTS if key in name), "embeddings")
            counts[part] += p.numel()
        return counts

    # --- Hugging Face transformers ---------------------------------------------------------------

    @classmethod
    def from_hf(cls, hf_model: GPT2LMHeadModel) -> GPT:
        """A GPT with the weights of a ``transformers.GPT2LMHeadModel`` (e.g. ``from_pretrained(
        "gpt2")``), on its device, in its dtype and train/eval mode.

        The parameter names are the same on both sides; GPT-2's Conv1D weights (in, out) are
        transposed into nn.Linear's (out, in). The fused q|k|v ``c_attn`` keeps its layout (q, k,
        v stacked along the output, heads side by side in each), so it needs no reshuffling.
        """
        from transformers import GPT2LMHeadModel

        if not isinstance(hf_model, GPT2LMHeadModel):
            raise ValueError(
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
                raise ValueError(
                    f"config.{name}={value!r} is not GPT-2's: expected one of {allowed}"
                )
        dropouts = {hc.resid_pdrop, hc.embd_pdrop, hc.attn_pdrop}
        if len(dropouts) > 1:
            raise ValueError(
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
        model = cls(config)
        sd = {
            k: v.t() if k.endswith(CONV1D_WEIGHTS) else v for k, v in hf_model.state_dict().items()
        }
        model.load_state_dict(sd, strict=True)  # strict: every name must match, both ways
        weight = hf_model.lm_head.weight
        return model.to(device=weight.device, dtype=weight.dtype).train(hf_model.training)

    @torch.no_grad()
    def to_hf(self) -> GPT2LMHeadModel:
        """This model as a ``transformers.GPT2LMHeadModel`` (same weights, device, dtype, mode).

        GPT-2 has learned positions and biases everywhere, so only such a model converts. The
        Hugging Face config gets no bos/eos token ids: those belong to a tokenizer, not a model.
        """
        from transformers import GPT2Config, GPT2LMHeadModel

        c = self.config
        if c.positions != "learned" or not c.bias:
            raise ValueError(
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
        sd = {k: v.t() if k.endswith(CONV1D_WEIGHTS) else v for k, v in self.state_dict().items()}
        hf_model.load_state_dict(sd, strict=True)
        weight = self.lm_head.weight
        return hf_model.to(device=weight.device, dtype=weight.dtype).train(self.training)
