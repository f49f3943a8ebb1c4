"""How fast is a LoRA training step, next to full fine-tuning and next to Hugging Face peft?

    .venv/bin/python benchmarks/bench_finetune.py                 # the course shape, rank 8
    .venv/bin/python benchmarks/bench_finetune.py --rank 16 --targets c_attn c_proj c_fc

Run by hand, never in the test suite. One model, GPTConfig.course(), random (seeded) weights:
the speed of a step does not depend on training. Four ways take the same training steps
(forward, backward, AdamW, batch --batch x 128 tokens of random ids): the course GPT fully
fine-tuned and with course_lib's LoRA, and its Hugging Face twin (``GPT.to_hf()``) fully
fine-tuned and with peft's LoRA at the same rank, alpha and targets. Each way is warmed up,
then timed, the best of --repeats interleaved runs of --steps steps.

A LoRA step still runs the whole forward and backward pass (the gradient must flow back
through the frozen layers to reach the adapters of the layers below), so it saves the weight
gradients and AdamW's work on the frozen matrices, not the bulk of the arithmetic: expect a
modest speed-up, and a large saving in optimizer memory and in what is saved.
"""

import argparse
import os
import time

import peft
import torch
import torch.nn.functional as F

from course_lib.finetune import add_lora
from course_lib.model import GPT, GPTConfig


def step_fn(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    x, y = batch

    def step() -> None:
        logits = model(x).logits
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, sum(p.numel() for p in params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--targets", nargs="+", default=["c_attn"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per run")
    parser.add_argument("--repeats", type=int, default=3, help="best of, interleaved")
    parser.add_argument("--threads", type=int, default=2, help="the reference machine has 2")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = GPTConfig.course()

    def base() -> GPT:
        torch.manual_seed(1337)
        return GPT(config).train()

    lora_config = peft.LoraConfig(r=args.rank, lora_alpha=args.alpha, target_modules=args.targets,
                                  fan_in_fan_out=True, lora_dropout=0.0)  # fmt: skip
    models = {
        "course_lib, full": base(),
        "course_lib, LoRA": add_lora(base(), args.rank, args.alpha, args.targets),
        "transformers, full": base().to_hf().train(),
        "peft, LoRA": peft.get_peft_model(base().to_hf(), lora_config).train(),
    }
    g = torch.Generator().manual_seed(0)
    seq = torch.randint(config.vocab_size, (args.batch, config.block_size + 1), generator=g)
    batch = (seq[:, :-1], seq[:, 1:])
    steps, trainable = {}, {}
    for name, model in models.items():
        steps[name], trainable[name] = step_fn(model, batch)
        for _ in range(2):  # warm-up: allocations, AdamW's state
            steps[name]()
    best = dict.fromkeys(models, float("inf"))
    for r in range(args.repeats):
        for name in list(models)[:: 1 if r % 2 == 0 else -1]:
            t0 = time.perf_counter()
            for _ in range(args.steps):
                steps[name]()
            best[name] = min(best[name], (time.perf_counter() - t0) / args.steps)

    print(f"torch {torch.__version__}, peft {peft.__version__}; "
          f"{torch.get_num_threads()} threads ({os.cpu_count()} CPUs)")  # fmt: skip
    print(f"model: GPTConfig.course(), {models['course_lib, full'].num_params():,} parameters; "
          f"batch {args.batch} x {config.block_size}; LoRA rank {args.rank}, alpha "
          f"{args.alpha:g}, targets {args.targets}")  # fmt: skip
    print(f"\n{'way':<22}{'ms/step':>9}{'trainable':>11}")
    for name, t in best.items():
        print(f"{name:<22}{1000 * t:>9.1f}{trainable[name]:>11,}")
    ours, theirs = best["course_lib, LoRA"], best["peft, LoRA"]
    print(f"\nLoRA / full fine-tuning time, course_lib: {ours / best['course_lib, full']:.2f}x")
    print(f"LoRA / full fine-tuning time, transformers + peft: "
          f"{theirs / best['transformers, full']:.2f}x")  # fmt: skip
    print(f"peft / course_lib LoRA step time: {theirs / ours:.2f}x (ours faster if > 1)")


if __name__ == "__main__":
    main()
