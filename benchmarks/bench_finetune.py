"""How fast is a LoRA training step, next to full fine-tuning and next to Hugging Face peft?

    .venv/bin/python benchmarks/bench_finetune.py                 # the course shape, rank 8
    .venv/bin/python benchmarks/bench_finetune.py --rank 16 --targets c_attn c_proj c_fc
    .venv/bin/python benchmarks/bench_finetune.py --batch 2 --steps 2 --rounds 3  # a smoke test

Run by hand, never in the test suite. One model, GPTConfig.course(), random (seeded) weights:
the speed of a step does not depend on training. Four ways take the same training steps
(forward, backward, AdamW, batch --batch x 128 tokens of random ids): the course GPT fully
fine-tuned and with course_lib's LoRA, and its Hugging Face twin (``GPT.to_hf()``) fully
fine-tuned and with peft's LoRA at the same rank, alpha and targets. The four are timed side
by side (``course_lib.timing.compare``), a call --steps steps: after a warm-up call each (it
allocates, and creates AdamW's state), --rounds rounds that call every way once in a rotating
order; steps/s is the median of the rounds, in brackets their middle half.

A LoRA step still runs the whole forward and backward pass (the gradient must flow back
through the frozen layers to reach the adapters of the layers below), so it saves the weight
gradients and AdamW's work on the frozen matrices, not the bulk of the arithmetic: expect a
modest speed-up, and a large saving in optimizer memory and in what is saved.
"""

import argparse
import os

import peft
import torch
import torch.nn.functional as F

from course_lib.finetune import add_lora
from course_lib.model import GPT, GPTConfig
from course_lib.timing import compare


def steps_fn(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor], n: int):
    """A function that takes ``n`` training steps of ``model`` on ``batch`` (AdamW, over the
    parameters that require a gradient), and how many parameters those are."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    x, y = batch

    def steps() -> None:
        for _ in range(n):
            logits = model(x).logits
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return steps, sum(p.numel() for p in params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--targets", nargs="+", default=["c_attn"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10, help="training steps a timed call")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds, interleaved")
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
    cases, trainable = {}, {}
    for name, model in models.items():
        cases[name], trainable[name] = steps_fn(model, batch, args.steps)
    timings = compare(cases, rounds=args.rounds)  # the warm-up call creates AdamW's state

    print(f"torch {torch.__version__}, peft {peft.__version__}; "
          f"{torch.get_num_threads()} threads ({os.cpu_count()} CPUs)")  # fmt: skip
    print(f"model: GPTConfig.course(), {models['course_lib, full'].num_params():,} parameters; "
          f"batch {args.batch} x {config.block_size}; LoRA rank {args.rank}, alpha "
          f"{args.alpha:g}, targets {args.targets}")  # fmt: skip
    print("trainable parameters: " + "; ".join(f"{k}: {v:,}" for k, v in trainable.items()))
    print()
    print(timings.table(args.steps, "steps/s", "way"))
    ratio = timings.speedup("course_lib, LoRA", base="course_lib, full")
    print(f"\nLoRA, times as fast as full fine-tuning, course_lib: {ratio}")
    ratio = timings.speedup("peft, LoRA", base="transformers, full")
    print(f"LoRA, times as fast as full fine-tuning, transformers + peft: {ratio}")
    ratio = timings.speedup("course_lib, LoRA", base="peft, LoRA")
    print(f"course_lib's LoRA, times as fast as peft's: {ratio} (ours faster if > 1)")


if __name__ == "__main__":
    main()
