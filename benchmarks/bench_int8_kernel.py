"""What the int8 kernel's 7-bit inputs cost (``use_int8_kernel``, ``reduce_range=True``), against
8-bit inputs, on the course model and on GPT-2 small's shape; PyTorch's own dynamic int8 Linear
(``torch.ao.quantization.quantize_dynamic``) beside it as the peer.

    .venv/bin/python benchmarks/bench_int8_kernel.py            # ~3 minutes on 2 cores
    .venv/bin/python benchmarks/bench_int8_kernel.py --skip-emulation

Run by hand, never in the test suite. fbgemm rounds each input of a layer to uint8 codes (one
scale and zero point a call). On CPUs without AVX-512 VNNI it adds the products of neighbouring
inputs in a saturating int16, which 8-bit codes overflow (255 * 127 * 2 > 32767): the kernel is
then wrong. 7-bit codes never overflow, so the course rounds to 7 bits on every CPU, as PyTorch's
dynamic Linear does on x86. This script measures what that costs where 8 bits are right (this
CPU, if it has VNNI) and what 8 bits would cost without VNNI (fbgemm's arithmetic emulated in
integers, ``tests/test_quantize.py``'s ``fbgemm_linear_dynamic``, slow: --skip-emulation).

Each way is a model of its own: the int8-kernel model copied, its layers' ``forward`` replaced
one instance at a time (``types.MethodType``), so that no way leaks into another. Numbers:
held-out bits per character of the course model on ``poems.plays_sample()``; for GPT-2 small's
shape (random seeded weights), the largest logit error against the dequantized path, as a share
of the largest logit, and greedy tokens/s at batch 1 of the ways that run fbgemm, timed side by
side (``compare_speed``: the median of --rounds interleaved rounds, in brackets their middle
half).
"""

import argparse
import copy
import sys
import types
from pathlib import Path

import torch

from course_lib.compress import held_out_bpc, quantize_int8, use_int8_kernel
from course_lib.compress.measure import compare_speed
from course_lib.compress.quantize import Int8Linear
from course_lib.config import GPTConfig
from course_lib.course_model import load_or_train
from course_lib.model import GPT
from course_lib.poems import plays_sample

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from test_quantize import fbgemm_linear_dynamic  # the one emulation, in the tests

N_TOKENS = 16  # generated a call, GPT-2 small's shape
WAYS = {  # forward(layer, x) of an Int8Linear with use_int8_kernel on
    "7-bit inputs (the course)": Int8Linear.forward,
    "8-bit inputs, this CPU": lambda self, x: torch.ops.quantized.linear_dynamic(
        x, self.packed, reduce_range=False
    ),
    "8-bit inputs, no VNNI (emulated)": lambda self, x: fbgemm_linear_dynamic(
        x, self, reduce_range=False, vnni=False
    ),
}


def kernel_models(quantized: GPT, emulate: bool) -> dict[str, GPT]:
    """One copy of the int8 ``quantized`` model a way, through the int8 kernel, each of its
    Int8Linear layers running that way's forward (set on the layer, not on the class)."""
    models = {}
    for name, forward in WAYS.items():
        if "emulated" in name and not emulate:
            continue
        model = use_int8_kernel(copy.deepcopy(quantized)).eval()
        for layer in model.modules():
            if isinstance(layer, Int8Linear):
                layer.forward = types.MethodType(forward, layer)
        models[name] = model
    return models


def course_model_rows(emulate: bool) -> None:
    course = load_or_train(progress=False)
    text, tok = plays_sample(), course.tokenizer
    base = course.model.eval()
    fp32 = held_out_bpc(base, tok, text)
    print(f"course model, held-out bits/char ({len(text):,} characters)")
    print(f"  {'float32':34} {fp32:.4f}")
    model = quantize_int8(copy.deepcopy(base))
    print(f"  {'int8, dequantized':34} {held_out_bpc(model, tok, text):.4f}")
    for name, way in kernel_models(model, emulate).items():
        with torch.no_grad():
            print(f"  {'int8 kernel, ' + name:34} {held_out_bpc(way, tok, text):.4f}")
    peer = torch.ao.quantization.quantize_dynamic(copy.deepcopy(base), {torch.nn.Linear})
    print(f"  {'PyTorch quantize_dynamic (peer)':34} {held_out_bpc(peer, tok, text):.4f}")


def gpt2_rows(emulate: bool, rounds: int) -> None:
    torch.manual_seed(0)
    model = quantize_int8(GPT(GPTConfig.gpt2()).eval())
    ids = torch.randint(0, model.config.vocab_size, (1, 32), generator=torch.Generator())
    ways = kernel_models(model, emulate)
    print("GPT-2 small's shape: largest logit error against the dequantized path")
    with torch.no_grad():
        reference = model(ids).logits  # the dequantized path
        for name, way in ways.items():
            error = (way(ids).logits - reference).abs().max() / reference.abs().max()
            print(f"  {name:34} {error:7.2%}")
    fbgemm = {name: way for name, way in ways.items() if "emulated" not in name}
    gen, _ = compare_speed(fbgemm, N_TOKENS, rounds=rounds, prefill=False)
    print(f"\nGPT-2 small's shape: generation at batch 1, {N_TOKENS} tokens a call")
    print(gen.table(N_TOKENS, "tokens/s", "int8 kernel"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skip-emulation", action="store_true", help="no emulated rows (slow)")
    parser.add_argument("--skip-gpt2", action="store_true")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds, GPT-2's speed")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, CPU kernels {torch.backends.cpu.get_cpu_capability()}")
    course_model_rows(not args.skip_emulation)
    if not args.skip_gpt2:
        gpt2_rows(not args.skip_emulation, args.rounds)
