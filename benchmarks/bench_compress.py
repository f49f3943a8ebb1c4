"""Lesson 08's table, re-measured in one run: every compressed course model as a ratio to float32;
our quantization against torchao's on the same model.

    .venv/bin/python benchmarks/bench_compress.py                 # all three parts, ~2 minutes
    .venv/bin/python benchmarks/bench_compress.py --quick         # a smoke test, ~30 s
    .venv/bin/python benchmarks/bench_compress.py --skip-gpt2 --threads 1

Run by hand, never in the test suite. Three parts, every number from ``course_lib.compress.measure``
(generation: tokens/s at batch 1 through the KV cache, greedy, the median of --runs runs after a
warm-up; prefill: tokens/s reading a whole 128-token context in one forward pass; bits per
character on the held-out plays, ``poems.plays_sample()``):

1. The course model (``load_or_train()``, the trained checkpoint) compressed every way Lesson 08
   teaches: float32, bfloat16, int8 (dequantizing to float32, then one float matmul), int8
   through fbgemm's int8 kernel (``use_int8_kernel``), int4 in groups of 128 and of 32, and
   magnitude pruning of half the blocks' weights (global, no recovery fine-tune), each measured
   with ``measure()`` (bytes: its model.safetensors, really saved) and printed with ``table()``,
   ratios to float32. Then the checkpoints Lesson 08's notebook caches under
   ``<checkpoints>/lesson08`` (pruned and recovered, distilled, ...), when they are there.
2. torchao's quantization of the same float32 model (``quantize_`` on a deepcopy) next to ours,
   format by format: int8 weight-only (ours dequantizes, torchao's ``Int8WeightOnlyConfig``
   multiplies by the int8 codes cast to float), int8 with dynamic int8 activations (ours:
   ``use_int8_kernel``; torchao's ``Int8DynamicActivationInt8WeightConfig``, ``torch._int_mm``
   on a CPU), int4 in groups of 32 (ours: ``quantize_int4(model, 32)``; torchao's
   ``IntxWeightOnlyConfig(torch.int4, PerGroup(32))``). The speeds are the best of --repeats
   rounds that alternate the order of the models; bytes are the weights in memory (torchao's
   tensors do not save to safetensors), each tensor subclass counted by its inner tensors.
3. The memory-bound case: GPT-2 small's shape (124M parameters, ~500 MB in float32, random
   seeded weights: speed does not depend on training), generation speed only. The course model's
   3.5 MB sit in the CPU's cache and its speed is bound by arithmetic; GPT-2's weights stream in
   from memory for every token, where fewer bytes a weight can pay (``measure.py`` says why).
   float32 is measured first and again last: the difference is the machine's drift in between.

What ``quantize_`` does with the tied lm_head: it swaps the ``weight`` Parameter of every
nn.Linear for a new Parameter holding a quantized tensor subclass. ``lm_head`` is an nn.Linear,
so it is quantized; ``transformer.wte`` is an nn.Embedding, which the default filter skips, and
it keeps the old float32 Parameter. The tie is broken by the swap itself (nothing to untie by
hand): torchao's model holds an int8 (or int4) lm_head and a float32 embedding, vocab x n_embd x
4 bytes more than ours (1 MB for the course model, 154 MB for GPT-2 small), which quantize the
one tied matrix once (``QuantizedEmbedding`` reads the head's codes). The byte columns show it.

Timings depend on the machine and on what else runs on it: with another process busy on a
2-core machine, 2 threads wait on each other (one is descheduled while the other spins), and
the numbers scatter by 10x or more; --threads 1 then gives steadier ratios.
"""

import argparse
import copy
import logging
import os
import time
from collections.abc import Callable

import torch
from torch import Tensor

from course_lib.checkpoint import load_checkpoint
from course_lib.compress.measure import (
    Measurement,
    generation_speed,
    held_out_bpc,
    measure,
    prefill_speed,
    table,
)
from course_lib.compress.prune import prune_magnitude
from course_lib.compress.quantize import (
    quantize_bf16,
    quantize_int4,
    quantize_int8,
    use_int8_kernel,
)
from course_lib.config import GPTConfig
from course_lib.course_model import load_or_train
from course_lib.env import checkpoint_dir
from course_lib.model import GPT
from course_lib.poems import plays_sample

# torchao's import logs a warning for each CUDA extension it cannot load on a CPU-only torch,
# and torch one about an Enum torchao registers: harmless, and they would bury the tables.
for _name in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_name).setLevel(logging.ERROR)
import torchao  # noqa: E402
from torchao.quantization import (  # noqa: E402
    Int8DynamicActivationInt8WeightConfig,
    Int8WeightOnlyConfig,
    IntxWeightOnlyConfig,
    PerGroup,
    quantize_,
)

QUICK_CHARS = 20_000  # --quick: the first characters of plays_sample()
Build = Callable[[GPT], GPT]

# Part 1: the course model, every way Lesson 08 compresses it (each on its own deepcopy).
OURS: dict[str, Build] = {
    "float32": lambda m: m,
    "bfloat16": quantize_bf16,
    "int8 (dequantize)": quantize_int8,
    "int8 + int8 kernel": lambda m: use_int8_kernel(quantize_int8(m)),
    "int4 g128": lambda m: quantize_int4(m, 128),
    "int4 g32": lambda m: quantize_int4(m, 32),
    "pruned 50% (global, no recovery)": lambda m: prune_magnitude(m, 0.5, scope="global"),
}
# Part 2: format -> (our row of part 1, torchao's name, its config).
PEERS = {
    "int8 weight-only": ("int8 (dequantize)", "torchao Int8WeightOnly",
                         lambda: Int8WeightOnlyConfig()),
    "int8 dynamic": ("int8 + int8 kernel", "torchao Int8DynamicActInt8Weight",
                     lambda: Int8DynamicActivationInt8WeightConfig()),
    "int4 g32": ("int4 g32", "torchao IntxWeightOnly int4 g32",
                 lambda: IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32))),
}  # fmt: skip
# Part 3: GPT-2 small's shape, generation only.
GPT2_WAYS: dict[str, Build] = {
    "float32": lambda m: m,
    "bfloat16": quantize_bf16,
    "int8 (dequantize)": quantize_int8,
    "int8 + int8 kernel": lambda m: use_int8_kernel(quantize_int8(m)),
    "torchao Int8WeightOnly": lambda m: torchao_quantized(m, Int8WeightOnlyConfig()),
    "torchao Int8DynamicActInt8Weight": lambda m: torchao_quantized(
        m, Int8DynamicActivationInt8WeightConfig()
    ),
}


def torchao_quantized(model: GPT, config) -> GPT:
    """``quantize_(model, config)`` (every nn.Linear, lm_head included; the tie to wte breaks,
    wte staying float32), then one forward pass, so that a config that quantizes fine but has
    no CPU kernel fails here rather than mid-measurement."""
    quantize_(model, config)
    with torch.inference_mode():
        model(torch.zeros(1, 4, dtype=torch.long))
    return model


def tensor_bytes(t: Tensor) -> int:
    """Bytes of ``t``; a tensor subclass (torchao's) by the inner tensors it is made of."""
    if hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in names if getattr(t, n) is not None)
    return t.numel() * t.element_size()


def memory_bytes(model: GPT) -> int:
    """The weights in memory, each shared tensor once: the state dict's tensors (parameters and
    saved buffers). Equal to ``model.num_bytes()`` for ours; use_int8_kernel's prepacked copy of
    the codes (fbgemm's layout, never saved) is not counted."""
    seen: dict[int, Tensor] = {}
    for t in model.state_dict(keep_vars=True).values():
        seen.setdefault(id(t), t)
    return sum(tensor_bytes(t) for t in seen.values())


def aligned(rows: list[list[str]], left: int = 1) -> str:
    """Rows of cells (the first the header) as a text table, the first ``left`` columns
    left-aligned, the numbers right-aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append(" | ".join(cells).rstrip())
    return "\n".join(lines)


def interleaved_speeds(models: dict[str, GPT], n_tokens: int, runs: int, repeats: int):
    """{name: (best generation tokens/s, best prefill tokens/s)} over ``repeats`` rounds, each
    round every model once (a median of ``runs``), the order alternating round to round."""
    best = {name: (0.0, 0.0) for name in models}
    for r in range(repeats):
        for name in list(models)[:: 1 if r % 2 == 0 else -1]:
            gen = generation_speed(models[name], n_tokens, runs)
            pre = prefill_speed(models[name], runs=runs)
            best[name] = (max(best[name][0], gen), max(best[name][1], pre))
    return best


def course_rows(args, base: GPT, tokenizer, text: str) -> tuple[list[Measurement], dict]:
    """Part 1: the course model compressed every way, then Lesson 08's cached checkpoints."""
    rows, models = [], {}
    for name, build in OURS.items():
        models[name] = build(copy.deepcopy(base)).eval()
        rows.append(measure(models[name], name, tokenizer, text, n_tokens=args.n_tokens,
                            runs=args.runs))  # fmt: skip
    folder = checkpoint_dir() / "lesson08"
    if not folder.is_dir():
        print(f"({folder} is missing: run notebooks/08_compression.ipynb to add the pruned and "
              f"distilled rows)")  # fmt: skip
        return rows, models
    for path in sorted(p for p in folder.iterdir() if p.is_dir()):
        try:
            ckpt = load_checkpoint(path)
        except Exception as e:  # a half-written or older checkpoint: say so, go on
            print(f"skipped {path.name}: {type(e).__name__}: {e}")
            continue
        rows.append(measure(ckpt.model.eval(), path.name, ckpt.tokenizer or tokenizer, text,
                            n_tokens=args.n_tokens, runs=args.runs))  # fmt: skip
    return rows, models


def versus_torchao(args, base: GPT, ours: dict[str, GPT], tokenizer, text: str) -> None:
    """Part 2: each of our formats against torchao's on the same float32 course model."""
    peers, skipped = {}, []
    for fmt, (_, theirs, config) in PEERS.items():
        try:
            peers[fmt] = torchao_quantized(copy.deepcopy(base), config()).eval()
        except Exception as e:  # a config without a CPU path in this torch / torchao
            skipped.append(fmt)
            print(f"skipped torchao {fmt} ({theirs}): {type(e).__name__}: {e}")
    models = {"float32": ours["float32"]}
    for fmt, model in peers.items():
        models[PEERS[fmt][0]] = ours[PEERS[fmt][0]]
        models[PEERS[fmt][1]] = model
    speed = interleaved_speeds(models, args.n_tokens, args.runs, args.repeats)
    bpc = {name: held_out_bpc(m, tokenizer, text) for name, m in models.items()}
    size = {name: memory_bytes(m) for name, m in models.items()}

    print(f"\n2. ours vs torchao {torchao.__version__}, the course model: best of "
          f"{args.repeats} interleaved rounds (each a median of {args.runs}); MB: the weights "
          f"in memory")  # fmt: skip
    header = ["format", "way", "MB", "bits/char", "tokens/s", "prefill tokens/s"]
    rows = [header]

    def cells(name: str) -> list[str]:
        gen, pre = speed[name]
        return [name, f"{size[name] / 1e6:.2f}", f"{bpc[name]:.3f}", f"{gen:.0f}", f"{pre:.0f}"]

    rows.append(["reference", *cells("float32")])
    for fmt in peers:
        mine, theirs, _ = PEERS[fmt]
        rows.append([fmt, *cells(f"{mine}")])
        rows.append(["", *cells(theirs)])
        (g0, p0), (g1, p1) = speed[mine], speed[theirs]
        rows.append(["", "ours / torchao", f"{size[mine] / size[theirs]:.2f}x",
                     f"{bpc[mine] - bpc[theirs]:+.3f}", f"{g0 / g1:.2f}x",
                     f"{p0 / p1:.2f}x"])  # fmt: skip
    print(aligned(rows, left=2))
    if skipped:
        print(f"(no torchao row for {', '.join(skipped)}: see above)")


def gpt2_part(args) -> None:
    """Part 3: GPT-2 small's shape, random weights, generation speed of each way."""
    t0 = time.perf_counter()
    torch.manual_seed(1337)
    base = GPT(GPTConfig.gpt2()).eval()
    print(f"\n3. GPT-2 small's shape ({base.num_params():,} parameters, random seeded weights, "
          f"built in {time.perf_counter() - t0:.0f} s): generation at batch 1, "
          f"{args.gpt2_tokens} tokens, median of {args.gpt2_runs} after a warm-up; "
          f"MB: the weights in memory (num_bytes, as saved, less the file's header)")  # fmt: skip
    results: dict[str, tuple[int, float]] = {}

    def run(label: str, name: str) -> None:
        try:
            model = GPT2_WAYS[name](copy.deepcopy(base) if name != "float32" else base).eval()
        except Exception as e:
            print(f"skipped {name}: {type(e).__name__}: {e}")
            return
        speed = generation_speed(model, args.gpt2_tokens, args.gpt2_runs)
        results[label] = (memory_bytes(model), speed)
        print(f"  {label}: {speed:.2f} tokens/s", flush=True)

    for name in GPT2_WAYS:
        run(name, name)
    run("float32, again at the end", "float32")  # the drift of the machine's load meanwhile
    first_bytes, first_speed = results["float32"]
    rows = [["way", "MB", "bytes x", "tokens/s", "speed x"]]
    for label, (nbytes, speed) in results.items():
        rows.append([label, f"{nbytes / 1e6:.0f}", f"{nbytes / first_bytes:.2f}",
                     f"{speed:.2f}", f"{speed / first_speed:.2f}"])  # fmt: skip
    print(aligned(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    quick = f"a smoke test: fewer runs and tokens, {QUICK_CHARS:,} characters of text"
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--runs", type=int, help="timed runs a speed, median (default 5; quick 2)")
    parser.add_argument("--n-tokens", type=int, help="generated a run (default 64; quick 16)")
    parser.add_argument("--repeats", type=int, help="ours vs torchao rounds (default 3; quick 1)")
    parser.add_argument("--gpt2-tokens", type=int, help="GPT-2 tokens a run (default 16; quick 8)")
    parser.add_argument("--gpt2-runs", type=int, help="GPT-2 timed runs (default 3; quick 1)")
    parser.add_argument("--skip-gpt2", action="store_true", help="leave out part 3")
    parser.add_argument("--threads", type=int, default=2, help="the reference machine has 2")
    args = parser.parse_args()
    defaults = dict(runs=(5, 2), n_tokens=(64, 16), repeats=(3, 1), gpt2_tokens=(16, 8),
                    gpt2_runs=(3, 1))  # fmt: skip
    for key, (full, quick) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()

    ckpt = load_or_train(progress=False)
    base = ckpt.model.eval()
    text = plays_sample()
    if args.quick:
        text = text[:QUICK_CHARS]
    print(f"torch {torch.__version__}, torchao {torchao.__version__}; "
          f"{torch.get_num_threads()} threads ({os.cpu_count()} CPUs); load average "
          f"{os.getloadavg()[0]:.2f}")  # fmt: skip
    c = base.config
    print(f"course model: {c.n_layer} layers, {c.n_head} heads, {c.n_embd} wide, context "
          f"{c.block_size}, vocab {c.vocab_size}; held-out text {len(text):,} characters; "
          f"{args.n_tokens} tokens a generation run, median of {args.runs}")  # fmt: skip

    rows, ours = course_rows(args, base, ckpt.tokenizer, text)
    print("\n1. the course model, ratios to float32 (MB: model.safetensors as saved)")
    print(table(rows))
    versus_torchao(args, base, ours, ckpt.tokenizer, text)
    if not args.skip_gpt2:
        gpt2_part(args)
    print(f"\n{time.perf_counter() - start:.0f} s in all; load average now "
          f"{os.getloadavg()[0]:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
