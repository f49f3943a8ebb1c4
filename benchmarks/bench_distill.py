"""Distillation on the course model: which temperature and mix, chosen on the poems; what the
teacher costs in the loop and cached; how much of the teacher's distribution k tokens hold.

    .venv/bin/python benchmarks/bench_distill.py                    # ~6 minutes on 2 cores
    .venv/bin/python benchmarks/bench_distill.py --steps 50 --T 1 --alpha 1   # a smoke test

Run by hand, never in the test suite. The teacher is the course model (``load_or_train``); the
student is Lesson 08's, ``GPTConfig.course(n_layer=2, n_embd=96)``, half the weights, the same
initial weights for every run (seed 1337), trained for --steps steps of 16 x 128 tokens
(Lesson 08's schedule). Every student trains on the same windows of the training plays: the
``TeacherTargets`` windows (the plays cut into 128-token windows, drawn at random), so that
scratch and distilled students see the same tokens.

1. The teacher's top-k: the mean probability its k likeliest next tokens hold, k = 8 ... 128.
2. Step time (``course_lib.timing.compare``): a scratch step, a step distilled with the teacher
   in the loop (``DistillationLoss``), and one distilled from the cached targets
   (``CachedDistillationLoss``); and the one-time cost of caching the targets.
3. Held-out bits per character of each student, on **the poems** (the finetune split), not on
   the held-out plays that Lesson 08 reports: the temperature T and the mix alpha are chosen here,
   on other text, and the lesson uses the winner. Results go to
   ``benchmarks/results/distill_<date>.jsonl``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch

from course_lib.compress import held_out_bpc
from course_lib.compress.distill import (
    CachedDistillationLoss,
    DistillationLoss,
    teacher_targets,
)
from course_lib.config import GPTConfig, TrainConfig
from course_lib.course_model import load_or_train
from course_lib.data import load_splits, load_tokens
from course_lib.env import seed_everything
from course_lib.model import GPT
from course_lib.poems import plays_sample
from course_lib.timing import compare
from course_lib.train import next_token_loss, train

STUDENT = GPTConfig.course(n_layer=2, n_embd=96)
RESULTS = Path(__file__).parent / "results"


def new_student() -> GPT:
    seed_everything(1337)
    return GPT(STUDENT)


def schedule(steps: int) -> TrainConfig:
    return TrainConfig.course(batch_size=16, max_steps=steps, warmup_steps=max(1, steps // 20),
                              eval_interval=steps, eval_steps=4, progress=False)  # fmt: skip


def xy(draw: Callable) -> Callable:
    """The (x, y) of a TeacherTargets batch source: the same windows, without the targets."""
    return lambda batch_size, generator: draw(batch_size, generator)[:2]


def one_step(loss_fn, draw) -> Callable[[], None]:
    """A function that runs one training step of a fresh student on batches from ``draw``."""
    net = new_student()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)

    def step() -> None:
        loss_fn(net, draw(16, g)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="each student's (Lesson 08: 300)")
    parser.add_argument("--T", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    parser.add_argument("--alpha", type=float, nargs="+", default=[0.5, 1.0])
    parser.add_argument("--k", type=int, default=32, help="cached top-k")
    parser.add_argument("--threads", type=int, default=2, help="the reference machine has 2")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}; {torch.get_num_threads()} threads ({os.cpu_count()} CPUs)")

    course = load_or_train(progress=False)
    teacher, tok = course.model.eval(), course.tokenizer
    train_tokens, val_tokens = load_tokens("train"), load_tokens("val")
    poems = load_splits().text("finetune")

    print("\n1. the teacher's top k next tokens hold, on average, of its probability (T = 1):")
    sample = teacher_targets(teacher, val_tokens[:20_000], k=128, progress=False)
    p = sample.log_p.float().exp()  # (n, block, 128), sorted high to low
    for k in (8, 16, 32, 64, 128):
        print(f"   k = {k:3}: {p[..., :k].sum(-1).mean():.3f}")

    targets, val_targets = {}, {}
    for T in args.T:
        targets[T] = teacher_targets(teacher, train_tokens, T=T, k=args.k, progress=False)
        val_targets[T] = teacher_targets(teacher, val_tokens, T=T, k=args.k, progress=False)
    first = targets[args.T[0]]
    print(f"\n2. caching the teacher's top {args.k} on the training plays "
          f"({len(train_tokens):,} tokens): {first.seconds:.1f} s, "
          f"{first.nbytes() / 1e6:.0f} MB")  # fmt: skip
    timings = compare({
        "scratch": one_step(next_token_loss, xy(first.batches)),
        "teacher in the loop": one_step(DistillationLoss(teacher, T=1.0, alpha=1.0),
                                        xy(first.batches)),
        "cached targets": one_step(CachedDistillationLoss(first.T, alpha=1.0), first.batches),
    }, rounds=7)  # fmt: skip
    print(timings.table(unit="steps/s", label="a training step, batch 16 x 128"))
    teacher_s = timings.median("teacher in the loop") - timings.median("scratch")
    print(f"   the teacher adds {teacher_s * 1e3:.0f} ms a step, {teacher_s * args.steps:.0f} s "
          f"a {args.steps}-step run; the cache costs {first.seconds:.0f} s once, shared by "
          f"every student")  # fmt: skip

    print(f"\n3. students of {args.steps} steps, held-out bits/char on the poems "
          f"({len(poems):,} characters), and on Lesson 08's held-out plays (not used to "
          f"choose):")  # fmt: skip
    plays_text = plays_sample()
    rows = []

    def run(name: str, data: dict, loss_fn) -> None:
        net = new_student()
        result = train(net, data, schedule(args.steps), loss_fn=loss_fn)
        row = dict(name=name, steps=args.steps, seconds=round(result.elapsed_s, 1),
                   poems_bpc=round(held_out_bpc(net, tok, poems), 4),
                   plays_bpc=round(held_out_bpc(net, tok, plays_text), 4))  # fmt: skip
        rows.append(row)
        print(f"   {name:28} poems {row['poems_bpc']:.3f}  plays {row['plays_bpc']:.3f}  "
              f"({row['seconds']:.0f} s)", flush=True)  # fmt: skip

    windows = {"train": first.batches, "val": val_targets[args.T[0]].batches}
    run("scratch", {s: xy(d) for s, d in windows.items()}, None)
    for T in args.T:
        data = {"train": targets[T].batches, "val": val_targets[T].batches}
        for alpha in args.alpha:
            run(f"cached, T={T:g}, alpha={alpha:g}", data, CachedDistillationLoss(T, alpha))
    best = min(rows[1:], key=lambda r: r["poems_bpc"])
    gain = rows[0]["poems_bpc"] - best["poems_bpc"]
    print(f"   chosen on the poems: {best['name']} ({gain:+.3f} bits/char against scratch)")

    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"distill_{datetime.date.today()}.jsonl"
    with out.open("a") as f:
        for row in rows:
            f.write(json.dumps({**row, "k": args.k}) + "\n")
    print(f"\nresults appended to {out}")


if __name__ == "__main__":
    main()
