"""`course-lib train --text` on texts a learner might bring: what the defaults reach, and what
the passes cost. Run by hand: `python benchmarks/bench_own_text.py [--sizes 50000 500000]
[--kinds shakespeare python cyrillic] [--passes 10 30 100] [--vocab 512 1024] [--depth 1 2 3]`
(0, the default of each list: what the plan chooses).

The texts, the same on every machine with this Python:
  shakespeare  the held-out plays, the poems, then the training plays, cut to size (English
               verse and prose; up to 676,000 characters the course model never read);
  python       this interpreter's standard library sources, sorted by path (source code);
  cyrillic     the training plays with each Latin letter written as a Cyrillic one (another
               script, 2 bytes a letter in UTF-8, the statistics of a real language).

For each text and each setting it runs the CLI's default run (the plan of
``own_text.plan_for``, the best checkpoint kept; with --finetune, also the course model fully
fine-tuned on the text for as long, compared in bits/char across the two tokenizers) and
prints the held-out bits per character of the kept model and of the last one (the same run
without keep-best), the unigram model's, the best step, and the wall-clock time.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from course_lib import data

CYRILLIC = str.maketrans(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "абцдефгхийклмнопярстужвьызАБЦДЕФГХИЙКЛМНОПЯРСТУЖВЬЫЗ",
)


def make_text(kind: str, n_bytes: int) -> str:
    if kind == "python":
        lib = Path(sysconfig.get_paths()["stdlib"])
        parts, size = [], 0
        for f in sorted(lib.rglob("*.py")):
            if "test" in f.parts or "site-packages" in f.parts:
                continue
            try:
                code = f.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            parts.append(code)
            size += len(code.encode())
            if size > n_bytes:
                break
        text = "\n".join(parts)
    elif kind == "shakespeare":  # what the course model never read first, for --finetune
        splits = data.load_splits()
        text = "\n".join(splits.text(s) for s in ("val", "finetune", "train"))
    else:
        text = data.load_splits().text("train").translate(CYRILLIC)
    return text.encode()[:n_bytes].decode("utf-8", errors="ignore")


def run(text_file: Path, out: Path, passes: float, vocab: int, depth: int) -> dict:
    cmd = [sys.executable, "-m", "course_lib", "train", "--text", str(text_file), "--out",
           str(out)]  # fmt: skip
    for option, value in (("--passes", passes), ("--vocab-size", vocab), ("--depth", depth)):
        cmd += [option, str(value)] if value else []
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - t0
    said = done.stdout
    bits = dict(re.findall(r"(this model|unigram model|uniform guess): (\d+\.\d+) bits/char", said))
    last = subprocess.run([sys.executable, "-m", "course_lib", "eval", "--checkpoint", str(out),
                           "--text", str(text_file), "--which", "last"],
                          capture_output=True, text=True, check=True).stdout  # fmt: skip
    kept = re.search(r"kept: the best checkpoint, step (\d+)", said)
    steps = re.search(r"step (\d+)/(\d+)", said)
    return {
        "plan": said.splitlines()[0],
        "best_bpc": float(bits["this model"]),
        "last_bpc": float(re.search(r"(\d+\.\d+) bits/char", last).group(1)),
        "unigram_bpc": float(bits["unigram model"]),
        "best_step": int(kept.group(1)),
        "steps": int(steps.group(2)),
        "seconds": round(seconds, 1),
    }


def finetune(text_file: Path, out: Path, seconds: float) -> dict:
    """The course model fully fine-tuned on the text for at most ``seconds`` (its steps sized to
    fit at about 0.15 s a step on 2 CPU cores), its best checkpoint kept, scored held out."""
    cmd = [sys.executable, "-m", "course_lib", "finetune", "--method", "full", "--text",
           str(text_file), "--max-steps", str(max(20, int(seconds / 0.15))), "--max-minutes",
           str(seconds / 60), "--out", str(out)]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(cmd, capture_output=True, text=True, check=True)
    took = time.perf_counter() - t0
    said = subprocess.run([sys.executable, "-m", "course_lib", "eval", "--checkpoint", str(out),
                           "--text", str(text_file)], capture_output=True, text=True,
                          check=True).stdout  # fmt: skip
    return {"finetuned_bpc": float(re.search(r"(\d+\.\d+) bits/char", said).group(1)),
            "finetune_seconds": round(took, 1)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50_000, 500_000, 5_000_000])
    parser.add_argument("--kinds", nargs="+", default=["shakespeare", "python", "cyrillic"])
    parser.add_argument("--passes", type=float, nargs="+", default=[0], help="0: the plan's")
    parser.add_argument("--vocab", type=int, nargs="+", default=[0], help="0: the plan's")
    parser.add_argument("--depth", type=int, nargs="+", default=[0], help="0: the plan's")
    parser.add_argument(
        "--finetune", action="store_true", help="also fine-tune the course model as long"
    )
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    print(f"{'text':>12} {'bytes':>9} {'passes':>6} {'vocab':>5} {'depth':>5} {'steps':>6} "
          f"{'best at':>7} {'kept':>6} {'last':>6} {'unigram':>7} {'seconds':>7}")  # fmt: skip
    settings = [(p, v, d) for p in args.passes for v in args.vocab for d in args.depth]
    for kind in args.kinds:
        for size in args.sizes:
            text_file = folder / f"{kind}-{size}.txt"
            text_file.write_text(make_text(kind, size), encoding="utf-8")
            for passes, vocab, depth in settings:
                out = folder / f"{kind}-{size}-{passes}-{vocab}-{depth}"
                r = run(text_file, out, passes, vocab, depth)
                print(f"{kind:>12} {size:>9,} {passes or 'plan':>6} {vocab or 'plan':>5} "
                      f"{depth or 'plan':>5} {r['steps']:>6} {r['best_step']:>7} "
                      f"{r['best_bpc']:>6.3f} {r['last_bpc']:>6.3f} {r['unigram_bpc']:>7.3f} "
                      f"{r['seconds']:>7.1f}", flush=True)  # fmt: skip
                if args.finetune:
                    r |= finetune(text_file, out.with_name(out.name + "-ft"), r["seconds"])
                    print(f"{'':>12} the course model fine-tuned for {r['finetune_seconds']:.0f} "
                          f"s: {r['finetuned_bpc']:.3f} bits/char", flush=True)  # fmt: skip
                asked = {"passes": passes, "vocab": vocab, "depth": depth}  # 0: the plan's
                print(json.dumps({"kind": kind, "bytes": size, **asked, **r}), file=sys.stderr)


if __name__ == "__main__":
    main()
