"""`course-lib train --text` on texts a learner might bring: what the defaults reach, and what
the passes cost. Run by hand: `python benchmarks/bench_own_text.py [--sizes 50000 500000]
[--kinds shakespeare python cyrillic] [--passes 10 30 100]`.

The texts, the same on every machine with this Python:
  shakespeare  the course's training plays, cut to size (English verse and prose);
  python       this interpreter's standard library sources, sorted by path (source code);
  cyrillic     the training plays with each Latin letter written as a Cyrillic one (another
               script, 2 bytes a letter in UTF-8, the statistics of a real language).

For each text and each number of passes it runs the CLI's default run (the plan of
``own_text.plan_for``, the best checkpoint kept) and prints the held-out bits per character of
the kept model and of the last one (the same run without keep-best), the unigram model's, the
best step, and the wall-clock time.
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
    else:
        text = data.load_splits().text("train")
        if kind == "cyrillic":
            text = text.translate(CYRILLIC)
    return text.encode()[:n_bytes].decode("utf-8", errors="ignore")


def run(text_file: Path, out: Path, passes: float | None) -> dict:
    cmd = [sys.executable, "-m", "course_lib", "train", "--text", str(text_file), "--out",
           str(out)] + (["--passes", str(passes)] if passes else [])  # fmt: skip
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50_000, 500_000, 5_000_000])
    parser.add_argument("--kinds", nargs="+", default=["shakespeare", "python", "cyrillic"])
    parser.add_argument("--passes", type=float, nargs="+", default=[0], help="0: the default")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    print(f"{'text':>12} {'bytes':>9} {'passes':>6} {'steps':>6} {'best at':>7} "
          f"{'kept':>6} {'last':>6} {'unigram':>7} {'seconds':>7}")  # fmt: skip
    for kind in args.kinds:
        for size in args.sizes:
            text_file = folder / f"{kind}-{size}.txt"
            text_file.write_text(make_text(kind, size), encoding="utf-8")
            for passes in args.passes:
                r = run(text_file, folder / f"{kind}-{size}-{passes}", passes or None)
                print(f"{kind:>12} {size:>9,} {passes or 'plan':>6} {r['steps']:>6} "
                      f"{r['best_step']:>7} {r['best_bpc']:>6.3f} {r['last_bpc']:>6.3f} "
                      f"{r['unigram_bpc']:>7.3f} {r['seconds']:>7.1f}", flush=True)  # fmt: skip
                print("   ", json.dumps(r), file=sys.stderr)


if __name__ == "__main__":
    main()
