"""How fast does the course GPT train next to Hugging Face's GPT2LMHeadModel, and at what MFU?

    .venv/bin/python benchmarks/bench_train.py                   # GPTConfig.course(), batch 32
    .venv/bin/python benchmarks/bench_train.py --n-layer 3 --n-embd 128 --block-size 128

Run by hand, never in the test suite. Both models have the same weights (``GPT.to_hf()``),
no dropout, and train on the same random token batches: a full step is forward with targets
(labels) to the loss, backward, an AdamW step and zero_grad, with the same AdamW settings.
Throughput is tokens per second over --steps steps, the best of --repeats runs that alternate
the two models. MFU: model FLOPs per second (6N + 12 L C T per token, nanoGPT's estimate_mfu)
over the float32 matmul peak measured in the same run. Quality (validation bits per character
in equal wall-clock time, against nanoGPT's character-level baby GPT) comes with
``--quality MINUTES``: the course model and the baby GPT, each probed and then trained for that
long by ``sweep_course_model.py``'s code (2 x 7.5 minutes for the course's own comparison).
"""

import argparse
import os
import time

import torch
import transformers

from course_lib.config import TrainConfig
from course_lib.env import get_device
from course_lib.metrics import matmul_peak
from course_lib.model import GPT, GPTConfig
from course_lib.optim import configure_optimizer

AIM = 1.2  # ours / Hugging Face, tokens per second


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(model, optimizer, hf: bool):
    def step(x, y):
        # Hugging Face shifts labels inside (it predicts T - 1 positions, the last one padded
        # with -100 and ignored), so labels=x; ours takes the shifted targets y. Both compute
        # the same (B, T, vocab) logits and cross-entropy over them: the work is equal.
        loss = model(input_ids=x, labels=x).loss if hf else model(x, y).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def run_steps(step, batches, device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    for x, y in batches:
        step(x, y)
    sync(device)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-layer", type=int)
    parser.add_argument("--n-head", type=int)
    parser.add_argument("--n-embd", type=int)
    parser.add_argument("--block-size", type=int)
    parser.add_argument("--batch-size", type=int, default=TrainConfig.course().batch_size)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per repetition")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per model first")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="the reference machine has 2")
    parser.add_argument("--device", help="default: cuda, then mps, then cpu")
    parser.add_argument(
        "--quality", type=float, metavar="MINUTES", help="train the course model, the baby GPT too"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = get_device(args.device)
    shape = dict(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd,
                 block_size=args.block_size)  # fmt: skip
    config = GPTConfig.course(**{k: v for k, v in shape.items() if v is not None})
    torch.manual_seed(1337)
    ours = GPT(config).to(device).train()
    hf = ours.to_hf().train()
    hc = hf.config
    assert hc.resid_pdrop == hc.embd_pdrop == hc.attn_pdrop == 0.0, "HF dropout is not 0"

    B, T, V = args.batch_size, config.block_size, config.vocab_size
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(V, (B, T + 1), generator=g).to(device) for _ in range(args.steps)]
    batches = [(s[:, :-1], s[:, 1:]) for s in seqs]  # (B, T) each
    with torch.no_grad():
        x = batches[0][0]
        diff = (ours(x).logits - hf(input_ids=x).logits).abs().max().item()

    settings = TrainConfig.course()
    hf_opt = torch.optim.AdamW(
        hf.parameters(), lr=settings.lr, betas=settings.betas,
        weight_decay=settings.weight_decay, fused=device.type == "cuda",
    )  # fmt: skip
    steps = {
        "course_lib GPT": make_step(ours, configure_optimizer(ours, settings), hf=False),
        "transformers GPT2LMHeadModel": make_step(hf, hf_opt, hf=True),
    }
    for step in steps.values():
        run_steps(step, batches[: args.warmup], device)
    best = dict.fromkeys(steps, float("inf"))
    for r in range(args.repeats):  # interleaved, the first model alternating
        for name in list(steps)[:: 1 if r % 2 == 0 else -1]:
            best[name] = min(best[name], run_steps(steps[name], batches, device))

    peak = matmul_peak(device)
    # N: every matrix a token goes through, the tied wte/lm_head once (as lm_head); wpe is a lookup.
    n = ours.num_params(non_embedding=True) + ours.transformer.wte.weight.numel()
    flops_per_token = 6 * n + 12 * config.n_layer * config.n_embd * T

    print(f"torch {torch.__version__}, transformers {transformers.__version__}; device {device}, "
          f"{torch.get_num_threads()} threads ({os.cpu_count()} CPUs)")  # fmt: skip
    print(f"model: {config.n_layer} layers, {config.n_head} heads, {config.n_embd} wide, context "
          f"{T}, vocab {V}; {ours.num_params():,} parameters; batch {B}")  # fmt: skip
    print(f"HF attention: {hc._attn_implementation}, dropout {hc.attn_pdrop}; same weights: "
          f"max |logit diff| {diff:.1e}")  # fmt: skip
    print(f"FLOPs per token {flops_per_token:,} (6N + 12LCT, N = {n:,}); measured float32 matmul "
          f"peak {peak / 1e9:,.1f} GFLOP/s")  # fmt: skip
    print(f"\n{f'training step, best of {args.repeats} x {args.steps}':<32}{'tokens/s':>11}"
          f"{'ms/step':>9}{'MFU':>8}{'ours / this':>13}")  # fmt: skip
    t_ours = best["course_lib GPT"]
    for name, t in best.items():
        tok_s = B * T * args.steps / t
        ratio = "" if name == "course_lib GPT" else f"{t / t_ours:.2f}x"
        print(f"{name:<32}{tok_s:>11,.0f}{1e3 * t / args.steps:>9.1f}"
              f"{tok_s * flops_per_token / peak:>8.1%}{ratio:>13}")  # fmt: skip
    print(f"aim: ours / Hugging Face >= {AIM:.1f}x (tokens/s)")
    if args.quality:
        from sweep_course_model import COURSE, compare, print_table  # beside this script

        print(f"\nvalidation bits per character after {args.quality} minutes of training each:")
        print_table(compare([COURSE, "baby"], args.quality))


if __name__ == "__main__":
    main()
