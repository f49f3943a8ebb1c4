"""Choose the course model: the best validation bits per character in a fixed CPU time budget.

    .venv/bin/python benchmarks/sweep_course_model.py --minutes 8            # the full sweep
    .venv/bin/python benchmarks/sweep_course_model.py --probe                # step times only

Each candidate (a model shape, batch and learning rate on the course's 2048-token BPE) first
runs a few steps to time one step on this machine; its schedule (warm-up + cosine) is then set
to the number of steps that fit in the budget, and it trains that many steps. Every candidate
is scored on the WHOLE validation split (4 held-out plays) in bits per character, which
compares across tokenizers. The reference is nanoGPT's CPU "baby GPT" on characters (4 layers,
4 heads, 128 wide, context 64, batch 12, its learning rate 1e-3), trained for the same time on
the same split. Run it on an otherwise idle machine: the budget is wall-clock time.
"""

import argparse
import json
import math
import time

import torch

from course_lib.data import load_splits, load_tokens
from course_lib.env import seed_everything
from course_lib.model import GPT, GPTConfig
from course_lib.train import TrainConfig, evaluate_all, train

# name: (model shape, batch_size, lr). Widths and depths around what a 2-core CPU can train
# for a few hundred steps in minutes.
CANDIDATES = {
    "L4-W256-T256-B16": (dict(n_layer=4, n_head=4, n_embd=256, block_size=256), 16, 1e-3),
    "L4-W192-T128-B32": (dict(n_layer=4, n_head=4, n_embd=192, block_size=128), 32, 1.5e-3),
    "L6-W192-T128-B24": (dict(n_layer=6, n_head=6, n_embd=192, block_size=128), 24, 1.5e-3),
    "L3-W128-T128-B32": (dict(n_layer=3, n_head=4, n_embd=128, block_size=128), 32, 2e-3),
}
BABY = (dict(vocab_size=256, n_layer=4, n_head=4, n_embd=128, block_size=64), 12, 1e-3)


def step_seconds(
    config: GPTConfig, data: dict, batch_size: int, lr: float, steps: int = 6
) -> float:
    seed_everything(0)
    model = GPT(config)
    tc = TrainConfig(
        batch_size=batch_size,
        max_steps=steps,
        lr=lr,
        min_lr=lr / 10,
        warmup_steps=1,
        eval_interval=10**6,
        eval_steps=1,
        progress=False,
    )
    train(model, data, tc)  # warm-up: the first steps allocate
    start = time.perf_counter()
    train(model, data, tc)
    return (time.perf_counter() - start) / steps


def run(
    name: str,
    config: GPTConfig,
    data: dict,
    batch_size: int,
    lr: float,
    minutes: float,
    n_chars: int,
) -> dict:
    per_step = step_seconds(config, data, batch_size, lr)
    max_steps = max(20, int(minutes * 60 / per_step))
    seed_everything(1337)
    model = GPT(config)
    tc = TrainConfig(
        batch_size=batch_size,
        max_steps=max_steps,
        lr=lr,
        min_lr=lr / 10,
        warmup_steps=max(1, max_steps // 20),
        eval_interval=10**6,
        eval_steps=1,
        max_minutes=minutes * 1.05,
        progress=False,
    )
    start = time.perf_counter()
    result = train(model, data, tc)
    seconds = time.perf_counter() - start
    val = evaluate_all(model, data["val"], config.block_size)
    bpc = val * len(data["val"]) / n_chars / math.log(2)
    row = {
        "name": name,
        "params": model.num_params(),
        "batch": batch_size,
        "lr": lr,
        "steps": result.step,
        "planned_steps": max_steps,
        "train_s": round(seconds, 1),
        "s_per_step": round(per_step, 3),
        "val_nats_per_token": round(val, 4),
        "val_bpc": round(bpc, 4),
        **{k: v for k, v in vars(config).items()},
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=8.0)
    parser.add_argument("--only", nargs="*", default=None, help="candidate names (and 'baby')")
    parser.add_argument("--probe", action="store_true", help="only time one step of each")
    parser.add_argument("--out", default="sweep_results.jsonl")
    args = parser.parse_args()
    torch.set_num_threads(2)  # the course's reference machine: 2 cores

    splits = load_splits()
    n_chars = len(splits.text("val", sep=""))
    bpe = {"train": load_tokens("train"), "val": load_tokens("val")}
    chars = {s: torch.tensor(list(splits.text(s).encode("ascii"))) for s in ("train", "val")}
    jobs = {n: (GPTConfig.course(**shape), bpe, b, lr) for n, (shape, b, lr) in CANDIDATES.items()}
    jobs["baby"] = (GPTConfig(**BABY[0]), chars, BABY[1], BABY[2])
    if args.only:
        jobs = {n: j for n, j in jobs.items() if n in args.only}

    rows = []
    for name, (config, data, batch, lr) in jobs.items():
        if args.probe:
            per_step = step_seconds(config, data, batch, lr)
            steps = int(args.minutes * 60 / per_step)
            print(f"{name:>18}: {per_step:.3f} s/step -> {steps} steps in {args.minutes} min")
            continue
        n = n_chars if data is bpe else len(chars["val"])
        rows.append(run(name, config, data, batch, lr, args.minutes, n))
        with open(args.out, "a") as f:
            f.write(json.dumps(rows[-1]) + "\n")
    if rows:
        base = next((r for r in rows if r["name"] == "baby"), None)
        print(f"\n{'candidate':>18} {'params':>9} {'steps':>6} {'val bpc':>8} {'vs baby':>8}")
        for r in rows:
            ratio = f"{r['val_bpc'] / base['val_bpc']:.3f}x" if base else ""
            print(
                f"{r['name']:>18} {r['params']:>9,} {r['steps']:>6} {r['val_bpc']:>8.3f} {ratio:>8}"
            )


if __name__ == "__main__":
    main()
