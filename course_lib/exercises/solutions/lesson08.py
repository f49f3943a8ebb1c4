"""Solutions to the exercises of Lesson 08 (compression)."""

import torch
import torch.nn.functional as F


def asymmetric_int4(w):
    lo = w.amin(dim=1).clamp(max=0)  # (out,): the row's range, widened to hold 0.0
    hi = w.amax(dim=1).clamp(min=0)
    scale = ((hi - lo) / 15).clamp(min=torch.finfo(torch.float32).tiny)  # 16 codes, 15 steps
    zero_point = torch.round(-lo / scale)  # (out,): the code of 0.0, in [0, 15]
    codes = torch.round(w / scale[:, None]) + zero_point[:, None]
    return codes.clamp(0, 15).to(torch.uint8), scale, zero_point.to(torch.uint8)


def csr_max_nonzeros(n_rows, n_cols, index_bytes):
    dense = 4 * n_rows * n_cols  # float32
    row_pointers = (n_rows + 1) * index_bytes  # where each row starts, and where the last ends
    per_nonzero = 4 + index_bytes  # its value and its column
    # the largest n with row_pointers + n * per_nonzero < dense
    return (dense - row_pointers - 1) // per_nonzero


def distill_loss_kl_div(student_logits, teacher_logits, T):
    log_q = F.log_softmax(student_logits / T, dim=-1)  # the student's, as logs: kl_div's input
    p = F.softmax(teacher_logits / T, dim=-1)  # the teacher's soft targets: kl_div's target
    V = student_logits.size(-1)
    kl = F.kl_div(log_q.reshape(-1, V), p.reshape(-1, V), reduction="batchmean")  # per position
    return T**2 * kl


def qlora(model, poems):
    from course_lib.compress import quantize_int8
    from course_lib.config import TrainConfig
    from course_lib.finetune import LoRALinear
    from course_lib.train import train

    quantize_int8(model)  # the base: 1 byte a weight, frozen
    model.requires_grad_(False)
    torch.manual_seed(0)  # A's random start
    for name, layer in list(model.projections()):
        if name.endswith("c_attn"):
            model.set_submodule(name, LoRALinear(layer, rank=8, alpha=16.0))
    schedule = dict(batch_size=8, max_steps=30, lr=2e-3, min_lr=2e-4, warmup_steps=3)
    train(model, poems, TrainConfig(**schedule, eval_steps=1, progress=False))
    return model
