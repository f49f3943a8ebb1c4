"""Lesson 08's table, re-measured in one run: every compressed course model as a ratio to float32;
our quantization against torchao's on the same model.

    .venv/bin/python benchmarks/bench_compress.py                 # all three parts, minutes
    .venv/bin/python benchmarks/bench_compress.py --quick         # a smoke test, ~1 minute
    .venv/bin/python benchmarks/bench_compress.py --skip-gpt2 --threads 1

Run by hand, never in the test suite. Three parts, every number from ``course_lib.compress.measure``
(generation: tokens/s at batch 1 through the KV cache, greedy; prefill: tokens/s reading a whole
128-token context in one forward pass; bits per character on the held-out plays,
``poems.plays_sample()``). The speeds of a part are timed together, ``compare_speed``
(``course_lib.timing``): after a warm-up, --rounds rounds that each run every model once in a
rotating order; a speed is the median of the rounds, in brackets the middle half of them, and a
ratio whose rounds do not tell the two apart reads "no measurable difference".

1. The course model (``load_or_train()``, the trained checkpoint) compressed every way Lesson 08
   teaches: float32, bfloat16, int8 (dequantizing to float32, then one float matmul), int8
   through fbgemm's int8 kernel (``use_int8_kernel``), int4 in groups of 128 and of 32, and
   magnitude pruning of half the blocks' weights (global, no recovery fine-tune), each measured
   with ``measure()`` (bytes: its model.safetensors, really saved) and printed with ``table()``,
   ratios to float32, then the speeds' own tables with their spread. Then the checkpoints
   Lesson 08's notebook caches under ``<checkpoints>/lesson08`` (pruned and recovered,
   distilled, ...), when they are there, timed with the others.
2. torchao's quantization of the same float32 model (``quantize_`` on a deepcopy) next to ours,
   format by format: int8 weight-only (ours dequantizes, torchao's ``Int8WeightOnlyConfig``
   multiplies by the int8 codes cast to float), int8 with dynamic int8 activations (ours:
   ``use_int8_kernel``; torchao's ``Int8DynamicActivationInt8WeightConfig``, ``torch._int_mm``
   on a CPU), int4 in groups of 32 (ours: ``quantize_int4(model, 32)``; torchao's
   ``IntxWeightOnlyConfig(torch.int4, PerGroup(32))``). "ours / torchao" is how many times as
   fast ours is, the median of the rounds' ratios; bytes are the weights in memory (torchao's
   tensors do not save to safetensors), each tensor subclass counted by its inner tensors.
3. The memory-bound case: GPT-2 small's shape (124M parameters, ~500 MB in float32, random
   seeded weights: speed does not depend on training), generation speed only, every way built
   first and then timed together over --gpt2-rounds rounds. The course model's 3.5 MB sit in the
   CPU's cache and its speed is bound by arithmetic; GPT-2's weights stream in from memory for
   every token, where fewer bytes a weight can pay (``measure.py`` says why).

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
from course_lib.compress.measure import compare_speed, held_out_bpc, measure, table
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
    "int4 g32": lambda m: quantize_int4(m, group_size=32),
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


def course_rows(args, base: GPT, tokenizer, text: str) -> dict[str, GPT]:
    """Part 1: the course model compressed every way, then Lesson 08's cached checkpoints, all
    measured without speed, then timed together; the speeds go into the rows. Returns the
    models by name."""
    rows, models = [], {}
    for name, build in OURS.items():
        models[name] = build(copy.deepcopy(base)).eval()
        rows.append(measure(models[name], name, tokenizer, text, speed=False))
    folder = checkpoint_dir() / "lesson08"
    if not folder.is_dir():
        print(f"({folder} is missing: run notebooks/08_compression.ipynb to add the pruned and "
              f"distilled rows)")  # fmt: skip
    for path in sorted(folder.glob("*/")):  # its subfolders; none if it is missing
        try:
            ckpt = load_checkpoint(path)
        except Exception as e:  # a half-written or older checkpoint: say so, go on
            print(f"skipped {path.name}: {type(e).__name__}: {e}")
            continue
        models[path.name] = ckpt.model.eval()
        rows.append(measure(models[path.name], path.name, ckpt.tokenizer or tokenizer, text,
                            speed=False))  # fmt: skip
    T = base.config.block_size
    gen, pre = compare_speed(models, args.n_tokens, T=T, rounds=args.rounds)
    for row in rows:
        row.tokens_per_s = gen.rate(row.name, args.n_tokens)
        row.prefill_tokens_per_s = pre.rate(row.name, T)
    print("\n1. the course model, ratios to float32 (MB: model.safetensors as saved)")
    print(table(rows))
    print(f"\ngeneration, {args.n_tokens} tokens a call:")
    print(gen.table(args.n_tokens, "tokens/s", "model"))
    print(f"\nprefill, {T} tokens a call:")
    print(pre.table(T, "tokens/s", "model"))
    return models


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
    T = base.config.block_size
    gen, pre = compare_speed(models, args.n_tokens, T=T, rounds=args.rounds)
    bpc = {name: held_out_bpc(m, tokenizer, text) for name, m in models.items()}
    size = {name: memory_bytes(m) for name, m in models.items()}

    print(f"\n2. ours vs torchao {torchao.__version__}, the course model: the median of "
          f"{args.rounds} interleaved rounds, ours / torchao with (in brackets) the middle half "
          f"of the rounds; MB: the weights in memory")  # fmt: skip
    header = ["format", "way", "MB", "bits/char", "tokens/s", "prefill tokens/s"]
    rows = [header]

    def cells(name: str) -> list[str]:
        return [name, f"{size[name] / 1e6:.2f}", f"{bpc[name]:.3f}",
                f"{gen.rate(name, args.n_tokens):.0f}", f"{pre.rate(name, T):.0f}"]  # fmt: skip

    rows.append(["reference", *cells("float32")])
    for fmt in peers:
        mine, theirs, _ = PEERS[fmt]
        rows.append([fmt, *cells(mine)])
        rows.append(["", *cells(theirs)])
        rows.append(["", "ours / torchao", f"{size[mine] / size[theirs]:.2f}x",
                     f"{bpc[mine] - bpc[theirs]:+.3f}", str(gen.speedup(mine, base=theirs)),
                     str(pre.speedup(mine, base=theirs))])  # fmt: skip
    print(aligned(rows, left=2))
    if skipped:
        print(f"(no torchao row for {', '.join(skipped)}: see above)")


def gpt2_part(args) -> None:
    """Part 3: GPT-2 small's shape, random weights, every way built, then generation timed."""
    t0 = time.perf_counter()
    torch.manual_seed(1337)
    base = GPT(GPTConfig.gpt2()).eval()
    models = {}
    for name, build in GPT2_WAYS.items():
        try:
            models[name] = build(copy.deepcopy(base) if name != "float32" else base).eval()
        except Exception as e:
            print(f"skipped {name}: {type(e).__name__}: {e}")
    print(f"\n3. GPT-2 small's shape ({base.num_params():,} parameters, random seeded weights, "
          f"{len(models)} ways built in {time.perf_counter() - t0:.0f} s): generation at batch 1, "
          f"{args.gpt2_tokens} tokens a call; MB: the weights in memory (num_bytes, as saved, "
          f"less the file's header)")  # fmt: skip
    gen, _ = compare_speed(models, args.gpt2_tokens, rounds=args.gpt2_rounds, prefill=False)
    first = memory_bytes(models["float32"])
    rows = [["way", "MB", "bytes x"]]
    for name, model in models.items():
        nbytes = memory_bytes(model)
        rows.append([name, f"{nbytes / 1e6:.0f}", f"{nbytes / first:.2f}"])
    print(aligned(rows))
    print(f"\ngeneration, {args.gpt2_tokens} tokens a call:")
    print(gen.table(args.gpt2_tokens, "tokens/s", "way"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    quick = f"a smoke test: fewer rounds and tokens, {QUICK_CHARS:,} characters of text"
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--rounds", type=int, help="timed rounds, parts 1-2 (default 7; quick 3)")
    parser.add_argument("--n-tokens", type=int, help="generated a call (default 64; quick 16)")
    parser.add_argument("--gpt2-tokens", type=int, help="GPT-2 tokens a call (default 16; quick 8)")
    parser.add_argument("--gpt2-rounds", type=int, help="GPT-2 timed rounds (default 3; quick 1)")
    parser.add_argument("--skip-gpt2", action="store_true", help="leave out part 3")
    parser.add_argument("--threads", type=int, default=2, help="the reference machine has 2")
    args = parser.parse_args()
    defaults = dict(rounds=(7, 3), n_tokens=(64, 16), gpt2_tokens=(16, 8), gpt2_rounds=(3, 1))
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
          f"{args.n_tokens} tokens a generation call, {args.rounds} rounds")  # fmt: skip

    ours = course_rows(args, base, ckpt.tokenizer, text)
    versus_torchao(args, base, ours, ckpt.tokenizer, text)
    if not args.skip_gpt2:
        gpt2_part(args)
    print(f"\n{time.perf_counter() - start:.0f} s in all; load average now "
          f"{os.getloadavg()[0]:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
