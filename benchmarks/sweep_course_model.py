"""Choose the course model: the best validation bits per character in a fixed CPU time budget.

    .venv/bin/python benchmarks/sweep_course_model.py --minutes 7.5          # the full sweep
    .venv/bin/python benchmarks/sweep_course_model.py --probe                # step times only
    .venv/bin/python benchmarks/sweep_course_model.py --only baby L3-W128-T128-B32

Each candidate (a model shape, batch and learning rate on the course's 2048-token BPE) is first
timed: a few steps to warm up, then ``--probe-steps`` steps timed inside the training loop (the
step times in the metrics log, evaluation excluded). Its schedule (warm-up + cosine) is then set
to the number of steps that fit in the budget, and it trains exactly that many steps. So the
result depends only on the probe, which must run on an idle machine; a busy machine during the
training itself only makes it slower, not different. Every candidate is scored on the WHOLE
validation split (4 held-out plays) in bits per character, which compares across tokenizers.

The reference is nanoGPT's CPU "baby GPT" on characters (4 layers, 4 heads, 128 wide, context
64, batch 12, its learning rate 1e-3), given the same budget on the same split.
"""

import argparse
import json
import math
import time

import torch

from course_lib.config import TrainConfig
from course_lib.data import load_splits, load_tokens
from course_lib.env import seed_everything
from course_lib.metrics import evaluate_all
from course_lib.model import GPT, GPTConfig
from course_lib.train import train

# name: (model shape, batch_size, lr). Round 1 (see README.md) found that in 8 minutes the
# smallest, fastest shape wins; round 2 searches around it: depth, width, context, lr.
CANDIDATES = {
    "L3-W128-T128-B32": (dict(n_layer=3, n_head=4, n_embd=128, block_size=128), 32, 2e-3),
    "L3-W128-T128-B32-lr3": (dict(n_layer=3, n_head=4, n_embd=128, block_size=128), 32, 3e-3),
    "L2-W128-T128-B32": (dict(n_layer=2, n_head=4, n_embd=128, block_size=128), 32, 3e-3),
    "L4-W128-T128-B32": (dict(n_layer=4, n_head=4, n_embd=128, block_size=128), 32, 2e-3),
    "L3-W96-T128-B32": (dict(n_layer=3, n_head=4, n_embd=96, block_size=128), 32, 3e-3),
    "L3-W128-T64-B64": (dict(n_layer=3, n_head=4, n_embd=128, block_size=64), 64, 3e-3),
    # round 1, for the record (each lost to the smaller shapes):
    "L4-W256-T256-B16": (dict(n_layer=4, n_head=4, n_embd=256, block_size=256), 16, 1e-3),
    "L4-W192-T128-B32": (dict(n_layer=4, n_head=4, n_embd=192, block_size=128), 32, 1.5e-3),
    "L6-W192-T128-B24": (dict(n_layer=6, n_head=6, n_embd=192, block_size=128), 24, 1.5e-3),
}
ROUND_2 = list(CANDIDATES)[:6]
COURSE = "L3-W128-T128-B32-lr3"  # the winner: GPTConfig.course() + TrainConfig.course()
BABY = (dict(vocab_size=256, n_layer=4, n_head=4, n_embd=128, block_size=64), 12, 1e-3)


def schedule(batch_size: int, lr: float, max_steps: int) -> TrainConfig:
    """The sweep's schedule: warm-up for 5% of the steps, cosine down to lr / 10, no evaluation
    but the one at step 0 (the budget is for training)."""
    return TrainConfig(
        batch_size=batch_size,
        max_steps=max_steps,
        lr=lr,
        min_lr=lr / 10,
        warmup_steps=max(1, max_steps // 20),
        eval_interval=10**9,
        eval_steps=1,
        progress=False,
    )


def step_seconds(config: GPTConfig, data: dict, batch_size: int, lr: float, steps: int) -> float:
    """Seconds per training step, timed inside the loop after 5 warm-up steps."""
    seed_everything(0)
    model = GPT(config)
    history = train(model, data, schedule(batch_size, lr, steps + 5)).history
    return (history[-2]["elapsed_s"] - history[4]["elapsed_s"]) / steps  # [-1]: the final eval


def run(name: str, config: GPTConfig, data: dict, batch: int, lr: float, per_step: float,
        minutes: float, n_chars: int) -> dict:  # fmt: skip
    max_steps = max(20, int(minutes * 60 / per_step))
    seed_everything(1337)
    model = GPT(config)
    start = time.perf_counter()
    result = train(model, data, schedule(batch, lr, max_steps))
    seconds = time.perf_counter() - start
    val = evaluate_all(model, data["val"], config.block_size)
    row = {
        "name": name,
        "params": model.num_params(),
        "batch": batch,
        "lr": lr,
        "steps": result.step,
        "s_per_step": round(per_step, 4),
        "budget_s": round(max_steps * per_step, 1),  # the steps at the probed (idle) speed
        "train_s": round(seconds, 1),  # as measured: more if the machine was busy meanwhile
        "val_nats_per_token": round(val, 4),
        "val_bpc": round(val * len(data["val"]) / n_chars / math.log(2), 4),
        **vars(config),
    }
    print(json.dumps(row), flush=True)
    return row


def compare(names: list[str], minutes: float, probe_steps: int = 30, probe_only: bool = False,
            out: str | None = None) -> list[dict]:  # fmt: skip
    """Probe, then train each named candidate (or "baby") for ``minutes``; the result rows."""
    unknown = set(names) - set(CANDIDATES) - {"baby"}
    if unknown:
        raise SystemExit(f"unknown candidates {sorted(unknown)}; known: {[*CANDIDATES, 'baby']}")
    splits = load_splits()
    n_chars = len(splits.text("val", sep=""))
    bpe = {"train": load_tokens("train"), "val": load_tokens("val")}
    chars = {s: torch.tensor(list(splits.text(s).encode("ascii"))) for s in ("train", "val")}
    jobs = {}
    for name in names:
        if name == "baby":
            jobs[name] = (GPTConfig(**BABY[0]), chars, BABY[1], BABY[2], len(chars["val"]))
        else:
            shape, batch, lr = CANDIDATES[name]
            jobs[name] = (GPTConfig.course(**shape), bpe, batch, lr, n_chars)

    # Every probe first, in a minute or so of an idle machine; then the long runs.
    per_step = {}
    for name, (config, data, batch, lr, _) in jobs.items():
        per_step[name] = step_seconds(config, data, batch, lr, probe_steps)
        steps = int(minutes * 60 / per_step[name])
        print(f"{name:>20}: {per_step[name]:.4f} s/step -> {steps} steps in {minutes} min")
    rows = []
    for name, (config, data, batch, lr, n) in ({} if probe_only else jobs).items():
        rows.append(run(name, config, data, batch, lr, per_step[name], minutes, n))
        if out:
            with open(out, "a") as f:
                f.write(json.dumps(rows[-1]) + "\n")
    return rows


def print_table(rows: list[dict]) -> None:
    base = next((r for r in rows if r["name"] == "baby"), None)
    print(f"\n{'candidate':>20} {'params':>9} {'steps':>6} {'val bpc':>8} {'vs baby':>8}")
    for r in rows:
        ratio = f"{r['val_bpc'] / base['val_bpc']:.3f}x" if base else ""
        print(f"{r['name']:>20} {r['params']:>9,} {r['steps']:>6} {r['val_bpc']:>8.3f} {ratio:>8}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=7.5)
    parser.add_argument("--only", nargs="*", default=None, help="candidate names (and 'baby')")
    parser.add_argument("--probe", action="store_true", help="only time the steps of each")
    parser.add_argument("--probe-steps", type=int, default=30)
    parser.add_argument("--out", default="sweep_results.jsonl")
    args = parser.parse_args()
    torch.set_num_threads(2)  # the course's reference machine: 2 cores
    names = args.only or [*ROUND_2, "baby"]
    rows = compare(names, args.minutes, args.probe_steps, args.probe, args.out)
    if rows:
        print_table(rows)


if __name__ == "__main__":
    main()
