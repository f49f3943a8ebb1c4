"""course_lib.compress.measure, against independent references: the file save_checkpoint
writes and the safetensors layout (8-byte header length, header, raw tensors), bits per
character computed by hand with evaluate_all and bits_per_char, and forward hooks that count
the passes a speed measurement makes.

Models are random and tiny; the tokenizer is trained on a few lines here; nothing is
downloaded.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from course_lib.checkpoint import WEIGHTS, load_checkpoint, save_checkpoint
from course_lib.compress.measure import (
    Measurement,
    count_weights,
    disk_bytes,
    generation_speed,
    held_out_bpc,
    measure,
    prefill_speed,
    table,
)
from course_lib.compress.quantize import (
    quantize_bf16,
    quantize_int4,
    quantize_int8,
    use_int8_kernel,
)
from course_lib.metrics import bits_per_char, evaluate_all
from course_lib.model import GPT, GPTConfig
from course_lib.tokenizer import BPETokenizer

SMALL = dict(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=32)
# Matrices dominate the bytes: n_embd 128 (4 * 128^2 weights a row of blocks against 128 biases).
WIDE = dict(vocab_size=256, block_size=16, n_layer=2, n_head=2, n_embd=128)
TEXT = (
    "Shall I compare thee to a summer's day?\nThou art more lovely and more temperate:\n"
    "Rough winds do shake the darling buds of May,\nAnd summer's lease hath all too short a "
    "date;\n"
) * 6


def gpt(seed: int = 0, **overrides: int) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**SMALL, **overrides})).eval()


@pytest.fixture(scope="module")
def tokenizer() -> BPETokenizer:
    tok = BPETokenizer()
    tok.train(TEXT, vocab_size=300)
    return tok


# --- bytes on disk ----------------------------------------------------------------------------


def test_disk_bytes_is_the_file_save_checkpoint_writes(tmp_path):
    model = gpt()
    path = save_checkpoint(tmp_path / "ckpt", model)
    file = path / WEIGHTS
    assert disk_bytes(model) == file.stat().st_size
    # safetensors: an 8-byte little-endian header length, the JSON header, then the tensors.
    header = int.from_bytes(file.read_bytes()[:8], "little")
    assert disk_bytes(model) == 8 + header + model.num_bytes()
    assert header < 0.1 * model.num_bytes()  # about num_bytes, within the header


def test_quantized_models_are_smaller_on_disk():
    fp32 = disk_bytes(gpt(**WIDE))
    int8 = disk_bytes(quantize_int8(gpt(**WIDE))) / fp32
    int4 = disk_bytes(quantize_int4(gpt(**WIDE))) / fp32
    bf16 = disk_bytes(quantize_bf16(gpt(**WIDE))) / fp32
    assert 0.25 <= int8 <= 0.3, int8
    assert int4 < 0.2, int4
    assert bf16 == pytest.approx(0.5, abs=0.01)


# --- bits per character -----------------------------------------------------------------------


def test_held_out_bpc_is_evaluate_all_over_the_characters(tokenizer, tmp_path):
    model = gpt(vocab_size=tokenizer.vocab_size).train()
    ids = torch.tensor(tokenizer.encode(TEXT))
    loss = evaluate_all(model, ids, SMALL["block_size"])
    by_hand = bits_per_char(loss, len(ids), len(TEXT))
    bpc = held_out_bpc(model, tokenizer, TEXT)
    assert bpc == by_hand
    assert model.training  # its mode is restored
    # An untrained model is about uniform over the vocabulary: ln(V) nats a token.
    uniform = math.log2(tokenizer.vocab_size) * len(ids) / len(TEXT)
    assert bpc == pytest.approx(uniform, rel=0.05)
    # Copies that change no weight measure the same.
    assert held_out_bpc(copy.deepcopy(model), tokenizer, TEXT) == bpc
    loaded = load_checkpoint(save_checkpoint(tmp_path / "ckpt", model)).model
    assert held_out_bpc(loaded, tokenizer, TEXT) == bpc


def test_held_out_bpc_errors(tokenizer):
    model = gpt(vocab_size=tokenizer.vocab_size)
    with pytest.raises(ValueError, match="empty"):
        held_out_bpc(model, tokenizer, "")
    with pytest.raises(ValueError, match="longer text"):
        held_out_bpc(model, tokenizer, "Shall I compare thee")


# --- speed ------------------------------------------------------------------------------------


def count_passes(model: GPT) -> list[tuple]:
    """(idx shape, tokens in the KV cache before the pass) of every forward pass of ``model``."""
    passes = []

    def hook(module, args, kwargs):
        cache = kwargs.get("kv_cache")
        passes.append((tuple(args[0].shape), None if cache is None else cache[0].length))

    model.register_forward_pre_hook(hook, with_kwargs=True)
    return passes


@pytest.mark.parametrize("train", [True, False])
def test_generation_speed_feeds_one_token_at_a_time(train):
    model = gpt().train(train)
    passes = count_passes(model)
    speed = generation_speed(model, n_tokens=5, runs=3, prompt_len=4)
    assert math.isfinite(speed) and speed > 0
    assert model.training is train
    one_run = [((1, 1), 4 + i) for i in range(5)]  # each after the prompt, read once
    assert passes == [((1, 4), 0)] + one_run * 4  # a warm-up run, then 3 timed ones


@pytest.mark.parametrize("train", [True, False])
def test_prefill_speed_reads_the_whole_context(train):
    model = gpt().train(train)
    passes = count_passes(model)
    speed = prefill_speed(model, runs=2)
    assert math.isfinite(speed) and speed > 0
    assert model.training is train
    assert passes == [((1, SMALL["block_size"]), 0)] * 3
    passes.clear()
    prefill_speed(model, T=8, runs=1, batch_size=3)
    assert passes == [((3, 8), 0)] * 2


def test_speeds_of_quantized_models():
    int8 = quantize_int8(gpt())
    for model in (quantize_bf16(gpt()), quantize_int4(gpt(), group_size=32), int8,
                  use_int8_kernel(copy.deepcopy(int8))):  # fmt: skip
        for speed in (generation_speed(model, 4, runs=1), prefill_speed(model, runs=1)):
            assert math.isfinite(speed) and speed > 0


def test_speed_errors():
    model = gpt()
    with pytest.raises(ValueError, match="n_tokens=16 or fewer"):
        generation_speed(model, n_tokens=17, prompt_len=16)
    with pytest.raises(ValueError, match="prompt_len below 32"):
        generation_speed(model, n_tokens=1, prompt_len=32)
    with pytest.raises(ValueError, match="use T=32"):
        prefill_speed(model, T=33)
    with pytest.raises(ValueError, match="runs must be an integer >= 1"):
        generation_speed(model, n_tokens=1, runs=0)
    with pytest.raises(ValueError, match="batch_size"):
        prefill_speed(model, batch_size=0)


# --- measure and table ------------------------------------------------------------------------


def test_measure(tokenizer):
    model = gpt(vocab_size=tokenizer.vocab_size)
    m = measure(model, "fp32", speed=False)
    assert m == Measurement("fp32", model.num_params(), disk_bytes(model), None, None, None)
    m = measure(model, "fp32", tokenizer, TEXT, n_tokens=4, runs=1)
    assert m.bits_per_char == held_out_bpc(model, tokenizer, TEXT)
    assert m.tokens_per_s > 0 and m.prefill_tokens_per_s > 0
    # The name defaults to the model's changes.
    assert measure(quantize_int8(gpt()), speed=False).name == "quantize_int8"
    assert measure(quantize_int4(gpt(), 32), speed=False).name == "quantize_int4(group_size=32)"
    assert measure(gpt(), speed=False).name == "model"
    with pytest.raises(ValueError, match="both a tokenizer and a text"):
        measure(model, tokenizer=tokenizer, speed=False)


def test_table():
    rows = [
        Measurement("float32", 1000, 4_000_000, 2.5, 100.0, 2000.0),
        Measurement("int8", 1010, 1_000_000, 2.55, 150.0, None),
        Measurement("int4", 1020, 500_000, None, None, None),
    ]
    text = table(rows)
    lines = text.splitlines()
    assert len(lines) == 4  # a header and a line a row
    for row, line in zip(rows, lines[1:], strict=True):
        assert line.startswith(row.name)
    assert "1.00" in lines[1] and "+0.000" in lines[1]
    assert "0.25" in lines[2] and "+0.050" in lines[2] and "1.50" in lines[2]
    assert "0.12" in lines[3] and " - " in lines[3]
    assert len({len(line) for line in lines}) == 1  # aligned
    # Columns nothing was measured for are left out.
    assert "tokens/s" not in table([Measurement("a", 1, 10), Measurement("b", 1, 5)])
    with pytest.raises(ValueError, match="no measurements"):
        table([])


def test_params_count_the_weights_a_quantized_model_computes_with_not_its_tensors():
    fp32 = gpt()
    assert count_weights(fp32) == fp32.num_params()
    for quantize in (quantize_int8, lambda m: quantize_int4(m, group_size=32), quantize_bf16):
        model = quantize(gpt())
        assert count_weights(model) == fp32.num_params()
        assert measure(model, speed=False).params == fp32.num_params()
    assert quantize_int4(gpt(), group_size=32).num_params() < fp32.num_params()  # packed bytes
