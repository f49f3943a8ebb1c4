"""How fast does the course GPT generate text, with and without its KV cache, next to Hugging Face?

    .venv/bin/python benchmarks/bench_sampling.py                  # 500 tokens, context 1024
    .venv/bin/python benchmarks/bench_sampling.py --new-tokens 100 --block-size 128 --threads 1
    .venv/bin/python benchmarks/bench_sampling.py --new-tokens 20 --block-size 128 --rounds 3

Run by hand, never in the test suite. One model, GPTConfig.course(block_size=1024), random
(seeded) weights: the speed does not depend on training. It generates --new-tokens greedy
tokens, batch 1, from a prompt of 8 random token ids, three ways: course_lib ``generate`` with
the KV cache, without it (the whole window through the model for every token, the reference),
and ``GPT2LMHeadModel.generate`` on the same weights (``GPT.to_hf()``), with its cache. The
three are timed side by side (``course_lib.timing.compare``): after a warm-up call each, --rounds
rounds that call every way once in a rotating order; the median of the rounds, in brackets
their middle half. Then each runs once more, untimed, to check that they give the same tokens.

The context is 1024 here, not the course model's own (course_lib's default block_size, shorter),
so that prompt and new tokens fit in it for all three. Past the context course_lib's generate
slides its window (see course_lib/sampling.py); Hugging Face's GPT-2, with learned positions,
cannot go past n_positions, so a --block-size under prompt + --new-tokens is refused.
"""

import argparse
import os

import torch
import transformers

from course_lib.env import get_device
from course_lib.model import GPT, GPTConfig
from course_lib.sampling import generate
from course_lib.timing import compare

AIM = 5.0  # uncached / cached time
PROMPT = 8  # prompt tokens


def agree(a: torch.Tensor, b: torch.Tensor) -> int:
    """How many leading new tokens the (1, T + n) outputs a and b share."""
    same = (a[0, PROMPT:] == b[0, PROMPT:]).tolist()
    return same.index(False) if False in same else len(same)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--new-tokens", type=int, default=500)
    parser.add_argument("--block-size", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds, interleaved")
    parser.add_argument("--threads", type=int, default=2, help="the reference machine has 2")
    parser.add_argument("--device", help="default: cuda, then mps, then cpu")
    args = parser.parse_args()
    N = args.new_tokens
    if args.block_size < PROMPT + N:
        parser.error(f"{PROMPT} prompt + {N} new tokens do not fit in --block-size "
                     f"{args.block_size}: Hugging Face's GPT-2 cannot go past it")  # fmt: skip
    torch.set_num_threads(args.threads)
    device = get_device(args.device)
    config = GPTConfig.course(block_size=args.block_size)
    torch.manual_seed(1337)
    ours = GPT(config).to(device).eval()
    hf = ours.to_hf().eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(config.vocab_size, (1, PROMPT), generator=g).to(device)

    def run_hf(n: int) -> torch.Tensor:
        with torch.inference_mode():
            return hf.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                               use_cache=True, pad_token_id=0)  # fmt: skip

    ways = {
        "course_lib, KV cache": lambda n: generate(ours, ids, n, greedy=True, use_cache=True),
        "course_lib, no cache": lambda n: generate(ours, ids, n, greedy=True, use_cache=False),
        "transformers generate": run_hf,
    }
    cases = {name: lambda way=way: way(N) for name, way in ways.items()}
    timings = compare(cases, rounds=args.rounds)
    out = {name: way(N) for name, way in ways.items()}  # the ids, to check that they agree

    hc = hf.config
    print(f"torch {torch.__version__}, transformers {transformers.__version__}; device {device}, "
          f"{torch.get_num_threads()} threads ({os.cpu_count()} CPUs)")  # fmt: skip
    c = config
    print(f"model: {c.n_layer} layers, {c.n_head} heads, {c.n_embd} wide, context {c.block_size}, "
          f"vocab {c.vocab_size}; {ours.num_params():,} parameters")  # fmt: skip
    print(f"HF attention: {hc._attn_implementation}; prompt {PROMPT} random ids, batch 1, greedy")
    print()
    print(timings.table(N, "tokens/s", f"{N} new tokens"))
    cached, uncached, ref = out.values()
    for name, other in (("no cache", uncached), ("transformers", ref)):
        n = agree(cached, other)
        same = "the same" if n == N else f"the same for the first {n}, then differ"
        print(f"greedy ids, KV cache vs {name}: {same} ({n}/{N})")
    ratio = timings.speedup("course_lib, KV cache", base="course_lib, no cache")
    print(f"\nwith the KV cache, times as fast as without: {ratio} (aim >= {AIM:.0f})")
    ratio = timings.speedup("course_lib, KV cache", base="transformers generate")
    print(f"ours with the cache, times as fast as Hugging Face's: {ratio} (ours faster if > 1)")


if __name__ == "__main__":
    main()
