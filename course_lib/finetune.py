"""Fine-tuning: LoRA adapters, in Hugging Face peft's layout, and a classification head.

Lesson 07 (fine-tuning) derives this.

LoRA (Hu et al., 2021) freezes a trained weight W (out, in) and learns a low-rank update next to
it: ``y = W x + (alpha / rank) * B A x``, with A (rank, in) and B (out, rank). B starts at zero,
so the adapted model starts exactly where the base model is; only A and B train, a few percent
of the parameters, and ``merge_lora`` folds ``(alpha / rank) * B A`` into W for inference.

The names and shapes are peft's (``base_layer``, ``lora_A.weight`` (rank, in), ``lora_B.weight``
(out, rank), scaling alpha / rank), and the course GPT's module names are GPT-2's, so an adapter
saved by ``save_adapter`` loads in ``peft.PeftModel.from_pretrained(model.to_hf(), path)`` and
gives the same logits.

    >>> import torch
    >>> from course_lib.model import GPT, GPTConfig
    >>> from course_lib.finetune import add_lora, merge_lora
    >>> model = GPT(GPTConfig(vocab_size=100, block_size=16, n_layer=2, n_head=2, n_embd=32))
    >>> idx = torch.randint(0, 100, (1, 8))
    >>> before = model(idx).logits
    >>> add_lora(model, rank=4, alpha=8, targets=["c_attn"])     # doctest: +ELLIPSIS
    GPT(...)
    >>> torch.equal(model(idx).logits, before)                   # B = 0: nothing changed yet
    True
    >>> sum(p.numel() for p in model.parameters() if p.requires_grad)   # 2 x (4x32 + 96x4)
    1024

A classification head (``add_classifier``) replaces the language-model head with one that
scores ``n_classes`` labels at every position; ``classify`` reads the scores at each
sequence's last real token, which in a causal model has seen the whole passage and none of the
padding after it, so padding cannot change a prediction.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import safetensors.torch
import torch
from torch import Tensor, nn

from course_lib.changes import applied, change, forget
from course_lib.errors import CourseError
from course_lib.files import fresh_folder, swap_in
from course_lib.model import GPT, PROJECTIONS

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
PEFT_PREFIX = "base_model.model."  # peft's name for the wrapped model, in its saved keys
# What add_lora's targets name, peft-style: a projection's last name (c_proj: attn's and mlp's).
LORA_TARGETS = tuple(dict.fromkeys(name.rpartition(".")[2] for name in PROJECTIONS))


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update: x (..., in) -> (..., out).

    ``y = base_layer(x) + scaling * lora_B(lora_A(dropout(x)))``, scaling = alpha / rank.
    """

    def __init__(self, base_layer: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base_layer = base_layer.requires_grad_(False)
        self.lora_A = nn.Linear(base_layer.in_features, rank, bias=False)  # weight (rank, in)
        self.lora_B = nn.Linear(rank, base_layer.out_features, bias=False)  # weight (out, rank)
        self.lora_dropout = nn.Dropout(dropout)
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        # peft's default: A like nn.Linear's own initialisation, B at zero (the update is 0).
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.base_layer(x) + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    def delta_weight(self) -> Tensor:
        """The update as a full matrix, (out, in): scaling * B @ A."""
        return self.scaling * self.lora_B.weight @ self.lora_A.weight


def _targets(model: GPT, targets: list[str]) -> list[tuple[str, nn.Module]]:
    """(name, module) of every projection (``model.projections()``) whose name ends with one of
    targets."""
    unknown = [t for t in targets if t not in LORA_TARGETS]
    if unknown or not targets:
        raise CourseError(
            f"targets={targets}: LoRA wraps the blocks' projections, a non-empty list of "
            f"{list(LORA_TARGETS)} (c_proj means both attn.c_proj and mlp.c_proj, as in peft)"
        )
    return [(name, m) for name, m in model.projections() if name.rpartition(".")[2] in targets]


@change("add_lora")
def add_lora(
    model: GPT,
    rank: int = 8,
    alpha: float = 16.0,
    targets: tuple[str, ...] | list[str] = ("c_attn",),
    dropout: float = 0.0,
) -> GPT:
    """Freeze ``model`` and wrap its ``targets`` projections (default: c_attn) in LoRALinear.

    Returns the model, changed in place; ``model.changes`` records the call, so checkpoints
    rebuild it. Only the adapters' A and B train afterwards.
    """
    targets = list(targets)
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise CourseError(f"rank={rank!r}, expected an integer >= 1 (4 to 16 is usual)")
    if not alpha > 0:
        raise CourseError(f"alpha={alpha}, expected > 0 (the update is scaled by alpha / rank)")
    layers = _targets(model, targets)
    for _, layer in layers:
        if isinstance(layer, LoRALinear):
            raise CourseError("the model already has LoRA adapters: merge_lora(model) first")
        if not isinstance(layer, nn.Linear):
            raise CourseError(f"LoRA wraps nn.Linear layers, found {type(layer).__name__}")
        if rank > min(layer.in_features, layer.out_features):
            raise CourseError(
                f"rank={rank} is larger than the layer ({layer.out_features} x "
                f"{layer.in_features}): a rank above min(out, in) adds parameters and no "
                f"expressive power; use rank <= {min(layer.in_features, layer.out_features)}"
            )
    model.requires_grad_(False)
    for name, layer in layers:
        model.set_submodule(name, LoRALinear(layer, rank, alpha, dropout))
    return model


@torch.no_grad()
def merge_lora(model: GPT) -> GPT:
    """Fold every adapter into its weight, ``W + scaling * B @ A``: the plain GPT again, as fast
    as the base model (and convertible with ``to_hf``). The adapters' change record goes too."""
    merged = False
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            parent_name, _, attr = name.rpartition(".")
            base = module.base_layer
            base.weight += module.delta_weight().to(base.weight.dtype)
            setattr(model.get_submodule(parent_name), attr, base.requires_grad_(True))
            merged = True
    if not merged:
        raise CourseError("the model has no LoRA adapters to merge: add_lora(model, ...) first")
    model.requires_grad_(True)
    return forget(model, add_lora)


def lora_config(model: GPT) -> dict:
    """The arguments ``add_lora`` was called with on ``model`` (ValueError if it was not)."""
    records = applied(model, add_lora)
    if not records:
        raise CourseError("the model has no LoRA adapters: add_lora(model, ...) first")
    return records[-1]["args"]


def save_adapter(model: GPT, path: str | Path) -> Path:
    """Write the adapters alone, as peft does: ``adapter_model.safetensors`` (keys
    ``base_model.model.<module>.lora_A.weight``, ...) and ``adapter_config.json``. A few
    hundred kilobytes beside the base model's checkpoint. Atomic, like a checkpoint."""
    args = lora_config(model)
    tensors = {PEFT_PREFIX + k: v.detach().cpu().contiguous()
               for k, v in model.state_dict().items() if ".lora_" in k}  # fmt: skip
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": args["rank"],
        "lora_alpha": args["alpha"],
        "lora_dropout": args["dropout"],
        "target_modules": args["targets"],
        "fan_in_fan_out": True,  # GPT-2's Conv1D layers, on the transformers side
        "bias": "none",
        "base_model_name_or_path": None,
        "inference_mode": True,
    }
    path = Path(path)
    tmp = fresh_folder(path)
    safetensors.torch.save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))
    swap_in(tmp, path)
    return path


def load_adapter(model: GPT, path: str | Path) -> GPT:
    """Add the adapters saved in ``path`` (by ``save_adapter`` or by peft) to ``model``, a base
    model without adapters, and load their weights. An adapter for another base model (other
    module names or shapes) is refused, naming the tensor and the fix."""
    path = Path(path)
    try:
        config = json.loads((path / ADAPTER_CONFIG).read_text())
        tensors = safetensors.torch.load_file(path / ADAPTER_WEIGHTS)
        rank, alpha, targets = config["r"], config["lora_alpha"], config["target_modules"]
    except (OSError, ValueError, KeyError) as err:
        raise CourseError(
            f"{path} is not a LoRA adapter ({type(err).__name__}: {err}): it needs "
            f"{ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}, as save_adapter or peft writes them"
        ) from None
    if config.get("peft_type", "LORA") != "LORA" or config.get("use_dora"):
        raise CourseError(f"{path} holds a {config.get('peft_type')} adapter, not plain LoRA")
    targets = [targets] if isinstance(targets, str) else list(targets)
    add_lora(model, rank=rank, alpha=alpha, targets=targets, dropout=config.get("lora_dropout", 0))
    expected = {k: v for k, v in model.state_dict().items() if ".lora_" in k}
    stored = {k.removeprefix(PEFT_PREFIX).replace(".default.", "."): v for k, v in tensors.items()}
    for name, t in stored.items():
        if name not in expected or expected[name].shape != t.shape:
            want = tuple(expected[name].shape) if name in expected else "no such adapter"
            raise CourseError(
                f"{path} holds {name} of shape {tuple(t.shape)}, but this model has {want}: the "
                f"adapter was trained on another base model. Load it into the model it was "
                f"trained for (same shape, same targets)"
            )
    if missing := sorted(set(expected) - set(stored)):
        raise CourseError(f"{path} lacks {len(missing)} adapter tensors, e.g. {missing[0]}")
    model.load_state_dict(stored, strict=False)
    return model


# ---------------------------------------------------------------------------------------------
# A classification head.


@change("add_classifier")
def add_classifier(model: GPT, n_classes: int) -> GPT:
    """Replace the language-model head by a head scoring ``n_classes`` labels at every position:
    ``model(idx).logits`` becomes (B, T, n_classes). The token embedding is untied from it."""
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2:
        raise CourseError(f"n_classes={n_classes!r}, expected an integer >= 2")
    head = nn.Linear(model.config.n_embd, n_classes, bias=False)
    nn.init.normal_(head.weight, mean=0.0, std=0.02)
    model.lm_head = head.to(model.transformer.wte.weight.device)
    return model


def classify(model: nn.Module, idx: Tensor, lengths: Tensor) -> Tensor:
    """Class scores (B, n_classes) of each sequence in idx (B, T), read at its last real token:
    ``lengths`` (B,) counts the real tokens of each row; what follows them is padding."""
    logits = model(idx).logits  # (B, T, n_classes)
    if lengths.dim() != 1 or len(lengths) != len(idx) or (lengths < 1).any():
        raise CourseError(f"lengths must be (B,) = ({len(idx)},) counts >= 1, got {lengths}")
    return logits[torch.arange(len(idx), device=idx.device), lengths.to(idx.device) - 1]
