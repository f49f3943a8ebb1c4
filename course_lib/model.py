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
lessons can wrap one (LoRA in Lesson 07, int8 in Lesson 08) by assigning to it; ``GPT.projections``
lists them, four a block.

    >>> import torch
    >>> from course_lib.model import GPT, GPTConfig
    >>> _ = torch.manual_seed(0)
    >>> config = GPTConfig(vocab_size=100, block_size=16, n_layer=2, n_head=2, n_embd=32)
    >>> model = GPT(config).eval()
    >>> idx = torch.randint(0, 100, (2, 8))                 # (B, T) token ids
    >>> logits, loss, *_ = model(idx[:, :-1], targets=idx[:, 1:])
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
from collections.abc import Iterator
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from course_lib.attention import KVCache, MultiHeadAttention
from course_lib.config import GPTConfig
from course_lib.errors import CourseError
from course_lib.positional import sinusoidal_encoding

if TYPE_CHECKING:  # transformers is imported only when converting: it takes seconds to load.
    from transformers import GPT2LMHeadModel

# Targets equal to this are skipped by the loss (the default of F.cross_entropy and of
# Hugging Face's labels), e.g. to train only on the answer part of a sequence.
IGNORE_INDEX = -100
# param_counts: which part a tensor belongs to, by a piece of its name (else the embeddings,
# or "other" for what a change added, e.g. a classifier head).
PARTS = ((".attn.", "attention"), (".mlp.", "mlp"), ("ln_", "layernorms"))
# The four projections of every Block, by their names in it (GPT-2's): ``GPT.projections``.
PROJECTIONS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


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
    """What ``GPT.forward`` returns; read its fields (``model(idx).logits``) or unpack it
    (``logits, loss, *_ = model(idx, targets)``)."""

    logits: Tensor | None  # (B, T, vocab_size): scores for the token after each position
    loss: Tensor | None  # scalar mean cross-entropy, when targets were given
    attentions: list[Tensor] | None  # n_layer x (B, n_head, T, T_total), when need_weights
    hidden: Tensor  # (B, T, C): the final LayerNorm's output, what lm_head (or a classifier) reads


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
        # What was done to this model after it was built (LoRA, quantization, pruning), as
        # course_lib.changes records it: a checkpoint replays these before loading the weights.
        self.changes: list[dict] = []
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

    def projections(self) -> Iterator[tuple[str, nn.Module]]:
        """(name, layer) of every block's four projections, block by block, in PROJECTIONS' order:
        ``transformer.h.<i>.attn.c_attn`` (3C, C), ``attn.c_proj`` (C, C), ``mlp.c_fc`` (4C, C)
        and ``mlp.c_proj`` (C, 4C), as nn.Linear weights (out, in); 4 * n_layer in all.

        These are the layers later lessons change: LoRA wraps them, quantization swaps them for
        int8 / int4 layers, pruning zeroes or narrows them. A layer is yielded as it is now, a
        replacement included; ``model.set_submodule(name, new)`` puts a new one in its place.
        """
        for i, block in enumerate(self.transformer.h):
            for name in PROJECTIONS:
                yield f"transformer.h.{i}.{name}", block.get_submodule(name)

    def new_kv_cache(self) -> list[KVCache]:
        """An empty KV cache for ``forward(..., kv_cache=...)``: one KVCache per layer."""
        return [KVCache() for _ in range(self.config.n_layer)]

    def forward(
        self,
        idx: Tensor,
        targets: Tensor | None = None,
        need_weights: bool = False,
        kv_cache: list[KVCache] | None = None,
        with_logits: bool = True,
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

        The output's ``hidden`` (B, T, C) is the final LayerNorm's output, the features a
        classifier head or feature distillation reads; ``with_logits=False`` skips the
        vocabulary projection when only those are needed (logits and loss are then None).
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
        if not with_logits:
            return GPTOutput(None, None, attentions if need_weights else None, x)
        logits = self.lm_head(x)  # (B, T, vocab_size)

        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.view(B * T, -1), targets.reshape(B * T), ignore_index=IGNORE_INDEX
            )
        return GPTOutput(logits, loss, attentions if need_weights else None, x)

    def _check_idx(self, idx: Tensor) -> tuple[int, int]:
        if (
            not isinstance(idx, Tensor)
            or idx.dim() != 2
            or idx.dtype not in (torch.long, torch.int)
        ):
            got = f"shape {tuple(idx.shape)}, dtype {idx.dtype}" if isinstance(idx, Tensor) else idx
            raise CourseError(
                f"idx must be a 2-D tensor of integer token ids, (B, T), got {got}: for one "
                f"sequence use idx[None], for a float tensor idx.long()"
            )
        B, T = idx.shape
        if T < 1:
            raise CourseError(f"idx has shape {(B, T)}: give at least one token per sequence")
        block_size = self.config.block_size
        if idx.size(1) > block_size:
            raise CourseError(
                f"sequence of {T} tokens is longer than the context block_size={block_size}: "
                f"crop to the last {block_size} tokens, idx[:, -{block_size}:]"
            )
        if idx.device.type != "cpu":
            # Reading values back from a GPU waits for it (a host synchronisation) on every
            # call; there a bad id trips the embedding's device-side assert instead.
            return B, T
        V = self.config.vocab_size
        low, high = idx.min().item(), idx.max().item()
        if low < 0 or high >= V:
            raise CourseError(
                f"token id {low if low < 0 else high} is outside the vocabulary [0, {V}) of this "
                f"model (vocab_size={V}): encode with the tokenizer the model was built for"
            )
        return B, T

    def _check_kv_cache(self, kv_cache: list[KVCache] | None, T: int) -> int:
        if kv_cache is None:
            return 0
        n_layer = self.config.n_layer
        if not isinstance(kv_cache, (list, tuple)) or len(kv_cache) != n_layer:
            raise CourseError(
                f"kv_cache must be a list of {n_layer} KVCache, one per layer: use "
                f"model.new_kv_cache()"
            )
        T_past = kv_cache[0].length
        if T_past + T > self.config.block_size:
            raise CourseError(
                f"the KV cache holds {T_past} tokens and {T} more make {T_past + T}, longer than "
                f"the context block_size={self.config.block_size}: start a new cache and feed "
                f"the last {self.config.block_size} tokens or fewer"
            )
        return T_past

    def _check_targets(self, targets: Tensor, idx: Tensor) -> None:
        if not isinstance(targets, Tensor) or targets.shape != idx.shape:
            got = tuple(targets.shape) if isinstance(targets, Tensor) else targets
            raise CourseError(
                f"targets must have the shape of idx, (B, T) = {tuple(idx.shape)}, got {got}: "
                f"targets[b, t] is the token after idx[b, t] (idx = seq[:, :-1], "
                f"targets = seq[:, 1:])"
            )
        if targets.dtype not in (torch.long, torch.int):
            raise CourseError(f"targets must be integer token ids, got dtype {targets.dtype}")
        if targets.device.type != "cpu":
            return  # no host synchronisation per forward on a GPU (see _check_idx)
        V = self.config.vocab_size
        bad = targets[(targets != IGNORE_INDEX) & ((targets < 0) | (targets >= V))]
        if bad.numel():
            raise CourseError(
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
        layernorms, and "other" (what a change added, e.g. a classifier head). They add up to
        ``num_params()``. A quantized layer's weights live in buffers (int8 codes and their
        scales): they count too, as every tensor of the state dict does."""
        counts = dict(embeddings=0, attention=0, mlp=0, layernorms=0, other=0)
        for name, t in self._weights().items():
            part = next((part for key, part in PARTS if key in name), None)
            if part is None:
                part = "embeddings" if name.startswith(("transformer.w", "lm_head")) else "other"
            counts[part] += t.numel()
        if not counts["other"]:
            del counts["other"]
        return counts

    def num_bytes(self) -> int:
        """Bytes of the weights in memory (each tied tensor once), as they would be saved."""
        return sum(t.numel() * t.element_size() for t in self._weights().values())

    def _weights(self) -> dict[str, Tensor]:
        """The state dict (parameters and saved buffers) with each shared tensor once."""
        out, seen = {}, set()
        for name, t in self.state_dict(keep_vars=True).items():
            if id(t) not in seen:  # a tied parameter is one object under two names
                seen.add(id(t))
                out[name] = t
        return out

    # --- Hugging Face transformers (the conversion itself: course_lib.hf_gpt2) ---------------

    @classmethod
    def from_hf(cls, hf_model: GPT2LMHeadModel) -> GPT:
        """A GPT with the weights of a ``transformers.GPT2LMHeadModel`` (e.g. ``from_pretrained(
        "gpt2")``), on its device, in its dtype and train/eval mode (``hf_gpt2.from_hf``)."""
        from course_lib.hf_gpt2 import from_hf

        return from_hf(hf_model)

    def to_hf(self) -> GPT2LMHeadModel:
        """This model as a ``transformers.GPT2LMHeadModel`` (same weights, device, dtype, mode),
        or a ValueError naming what GPT-2 cannot express (``hf_gpt2.to_hf``)."""
        from course_lib.hf_gpt2 import to_hf

        return to_hf(self)
