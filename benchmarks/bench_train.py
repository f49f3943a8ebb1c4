"""How fast does the course GPT train next to Hugging Face's GPT2LMHeadModel, and at what MFU?

    .venv/bin/python benchmarks/bench_train.py                   # GPTConfig.course(), batch 32
    .venv/bin/python benchmarks/bench_train.py --n-layer 3 --n-embd 128 --block-size 128
    .venv/bin/python benchmarks/bench_train.py --n-layer 1 --block-size 32 --batch-size 2 \
        --steps 2 --rounds 3                                    # a smoke test

Run by hand, never in the test suite. Both models have the same weights (``GPT.to_hf()``),
no dropout, and train on the same random token batches: a full step is forward with targets
(labels) to the loss, backward, an AdamW step and zero_grad, with the same AdamW settings.
Throughput is tokens per second over --steps steps, the two models timed side by side
(``course_lib.timing.compare``): after --warmup untimed calls of --steps steps each, --rounds
rounds that train each model once in a rotating order; the median of the rounds, in brackets
their middle half. MFU: model FLOPs per second (6N + 12 L C T per token, nanoGPT's estimate_mfu)
over the float32 matmul peak measured in the same run. Quality (validation bits per character
in equal wall-clock time, against nanoGPT's character-level baby GPT) comes with
``--quality MINUTES``: the course model and the baby GPT, each probed and then trained for that
long by ``sweep_course_model.py``'s code (2 x 7.5 minutes for the course's own comparison).
"""

import argparse
import os

import torch
import transformers

from course_lib.config import TrainConfig
from course_lib.env import get_device
from course_lib.metrics import matmul_peak
from course_lib.model import GPT, GPTConfig
from course_lib.optim import configure_optimizer
from course_lib.timing import compare

AIM = 1.2  # ours / Hugging Face, tokens per second


def make_steps(model, optimizer, batches, hf: bool):
    """A function that takes one training step of ``model`` on each of ``batches``."""

    def steps() -> None:
        for x, y in batches:
            # Hugging Face shifts labels inside (it predicts T - 1 positions, the last one
            # padded with -100 and ignored), so labels=x; ours takes the shifted targets y. Both
            # compute the same (B, T, vocab) logits and cross-entropy over them: equal work.
            loss = model(input_ids=x, labels=x).loss if hf else model(x, y).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-layer", type=int)
    parser.add_argument("--n-head", type=int)
    parser.add_argument("--n-embd", type=int)
    parser.add_argument("--block-size", type=int)
    parser.add_argument("--batch-size", type=int, default=TrainConfig.course().batch_size)
    parser.add_argument("--steps", type=int, default=20, help="training steps a timed call")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per model first")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds, interleaved")
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
    cases = {
        "course_lib GPT": make_steps(ours, configure_optimizer(ours, settings), batches, hf=False),
        "transformers GPT2LMHeadModel": make_steps(hf, hf_opt, batches, hf=True),
    }
    timings = compare(cases, rounds=args.rounds, warmup=args.warmup)

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
    print()
    print(timings.table(B * T * args.steps, "tokens/s", f"training, {args.steps} steps a call"))
    mfu = {name: timings.rate(name, B * T * args.steps) * flops_per_token / peak for name in cases}
    print("MFU at the median speed: " + "; ".join(f"{name}: {m:.1%}" for name, m in mfu.items()))
    ratio = timings.speedup("course_lib GPT", base="transformers GPT2LMHeadModel")
    print(f"ours, times as fast as Hugging Face (tokens/s): {ratio} (aim >= {AIM:.1f})")
    if args.quality:
        import sweep_course_model as sweep  # beside this script

        print(f"\nvalidation bits per character after {args.quality} minutes of training each:")
        sweep.print_table(sweep.compare([sweep.COURSE, "baby"], args.quality))


if __name__ == "__main__":
    main()
