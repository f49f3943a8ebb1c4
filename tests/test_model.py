"""course_lib.model: the GPT is GPT-2, to the last digits.

The reference is Hugging Face's `transformers.GPT2LMHeadModel`, randomly initialised (nothing is
downloaded) with the eager attention that writes the softmax out, then with every parameter
redrawn: a fresh model has LayerNorms at identity and zero biases, which would hide a LayerNorm
or a bias loaded into the wrong place. Three shapes: a tiny one, one with 3 heads and 3 layers
(odd counts catch a head split that only works for even ones), and GPT-2 small itself (124M).
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
from torch import Tensor, nn
from transformers import GPT2Config, GPT2LMHeadModel

from course_lib.attention import KVCache
from course_lib.data import VOCAB_SIZE
from course_lib.model import GPT, MLP, Block, GPTConfig
from course_lib.positional import sinusoidal_encoding

# float32 carries about 7 significant digits (eps = 1.2e-7). The two models compute the same
# sums in different orders (Conv1D's addmm on (in, out) weights against nn.Linear, fused GELU
# and attention kernels against Hugging Face's written-out ones), so logits of order 1 agree to
# a few eps per layer, not bit for bit: measured up to 4e-6 for the small models (logits of
# order 1-5). GPT-2 small has 12 layers of 768-wide sums and a 50257-wide head (measured
# 1.9e-6 with these random weights; trained ones are not at hand offline): 1e-4 for it.
ATOL_SMALL = 1e-5
ATOL_GPT2 = 1e-4
# One token at a time with a KV cache reorders the same sums again (measured 1.5e-7).
KV_ATOL = 1e-5
# An untrained model's next-token distribution is close to uniform, so its loss is close to
# ln(vocab_size). Not equal: its logits spread with a std of about sqrt(C) * 0.02 = 0.32 for the
# course model, which raises the log-sum-exp by about 0.32^2 / 2 = 0.05 (measured 0.047-0.055
# over seeds, on 2048 positions); 0.1 allows that and catches an init that is off by a factor.
LN_VOCAB_TOL = 0.1

GPT2_PARAMS = 124_439_808  # GPT-2 small, the tied wte/lm_head counted once
GPT2_NON_EMBEDDING = GPT2_PARAMS - 50257 * 768 - 1024 * 768  # 85,056,000

# name: (vocab_size, block_size, n_layer, n_head, n_embd, std of the redrawn weights)
# std 0.2 on the small models puts activations where GELU's curve and softmax's sharpness
# matter (with 0.02 a wrong GELU would pass); GPT-2 small keeps GPT-2's own 0.02.
SHAPES = {
    "tiny": (100, 16, 2, 2, 32, 0.2),
    "odd_heads": (101, 20, 3, 3, 72, 0.2),  # 3 heads of 24 channels
    "gpt2": (50257, 1024, 12, 12, 768, 0.02),
}


def make_hf(
    vocab_size: int, block_size: int, n_layer: int, n_head: int, n_embd: int, std: float
) -> GPT2LMHeadModel:
    """A Hugging Face GPT-2 in eval mode, without dropout, every parameter drawn at random."""
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=block_size,
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=None,  # GPT-2's 50256 lies outside the small vocabularies
        eos_token_id=None,  # and generate() must not stop early: the course loop never does
        attn_implementation="eager",
    )
    hf = GPT2LMHeadModel(config).eval()
    hf.loss_type = "ForCausalLM"  # see GPT.to_hf: silences a transformers 5 warning
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if ".ln_" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif ".ln_" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(std * torch.randn(p.shape, generator=g))
    return hf


class Pair(NamedTuple):
    hf: GPT2LMHeadModel  # the reference
    gpt: GPT  # the course model, loaded from it with GPT.from_hf
    atol: float  # the tolerance on their logits and losses
    ids: Tensor  # (B, T) an input: B=2, T=16 for the small models; B=1 for GPT-2, to stay fast


@pytest.fixture(
    scope="module",
    params=["tiny", "odd_heads", pytest.param("gpt2", marks=pytest.mark.slow)],
)
def pair(request) -> Pair:
    hf = make_hf(*SHAPES[request.param])
    if request.param == "gpt2":
        return Pair(hf, GPT.from_hf(hf), ATOL_GPT2, random_ids(hf.config.vocab_size, B=1))
    return Pair(hf, GPT.from_hf(hf), ATOL_SMALL, random_ids(hf.config.vocab_size))


def random_ids(vocab_size: int, B: int = 2, T: int = 16, seed: int = 2) -> Tensor:
    return torch.randint(0, vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


def tiny_model(**overrides) -> GPT:
    config = dict(vocab_size=100, block_size=16, n_layer=2, n_head=2, n_embd=32)
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**config, **overrides})).eval()


@pytest.fixture(scope="module")
def course_model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig.course()).eval()


# --- parity with Hugging Face's GPT-2 ----------------------------------------------------------


@torch.no_grad()
def test_logits_match_hf(pair):
    hf, gpt, atol, ids = pair
    assert not gpt.training
    torch.testing.assert_close(gpt(ids).logits, hf(ids).logits, atol=atol, rtol=0)


@torch.no_grad()
def test_loss_matches_hf_which_shifts_its_labels_inside(pair):
    hf, gpt, atol, ids = pair
    # Hugging Face: labels = the sequence itself; it drops the last logit and the first label.
    # The course: the targets are already shifted, targets[:, t] = ids[:, t + 1].
    expected = hf(ids, labels=ids).loss
    torch.testing.assert_close(
        gpt(ids[:, :-1], targets=ids[:, 1:]).loss, expected, atol=atol, rtol=0
    )
    # The same with the full sequence in: the last position has no next token, so it is ignored.
    targets = torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], -100)], dim=1)
    torch.testing.assert_close(gpt(ids, targets=targets).loss, expected, atol=atol, rtol=0)
    # Ignored positions (-100) are skipped by both.
    labels = ids.clone()
    labels[0, 3:9] = -100
    expected = hf(ids, labels=labels).loss
    torch.testing.assert_close(gpt(ids[:, :-1], labels[:, 1:]).loss, expected, atol=atol, rtol=0)


@torch.no_grad()
def greedy(gpt: GPT, ids: Tensor, max_new_tokens: int) -> Tensor:
    """The simplest decoding: append the most likely next token, again and again."""
    for _ in range(max_new_tokens):
        logits = gpt(ids).logits[:, -1]  # (B, vocab_size): the scores for the next token
        ids = torch.cat([ids, logits.argmax(dim=-1, keepdim=True)], dim=1)
    return ids


def test_greedy_continuation_matches_hf_generate(pair):
    hf, gpt, _, ids = pair
    prompt = ids[:, :6]
    expected = hf.generate(
        prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=8
    )
    assert torch.equal(greedy(gpt, prompt, 8), expected)


def test_parameter_counts_match_hf(pair):
    hf, gpt, _, _ = pair
    hf_count = sum(p.numel() for p in hf.parameters())  # parameters() yields a tied one once
    assert gpt.num_params() == hf_count == sum(gpt.param_counts().values())
    assert gpt.num_params() == sum(p.numel() for p in gpt.parameters())
    if hf.config.n_embd == 768:
        assert gpt.num_params() == GPT2_PARAMS
        assert gpt.num_params(non_embedding=True) == GPT2_NON_EMBEDDING


@torch.no_grad()
def test_to_hf_and_back_round_trips_exactly(pair):
    hf, gpt, atol, ids = pair
    hf2 = gpt.to_hf()
    assert isinstance(hf2, GPT2LMHeadModel) and not hf2.training
    assert hf2.lm_head.weight is hf2.transformer.wte.weight  # tied
    # HF -> course -> HF: the same weights (a transpose twice is exact), so the same logits up to
    # the attention kernel (to_hf keeps Hugging Face's default, here "eager" was asked for).
    sd, sd2 = hf.state_dict(), hf2.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    torch.testing.assert_close(hf2(ids).logits, hf(ids).logits, atol=atol, rtol=0)
    # course -> HF -> course: identical state and identical logits.
    gpt2 = GPT.from_hf(hf2)
    assert gpt2.config == gpt.config
    sd, sd2 = gpt.state_dict(), gpt2.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    assert torch.equal(gpt2(ids).logits, gpt(ids).logits)


def test_config_maps_both_ways():
    gpt = GPT(GPTConfig(vocab_size=100, block_size=16, n_layer=2, n_head=2, n_embd=32,
                        dropout=0.1, layer_norm_epsilon=1e-6))  # fmt: skip
    hc = gpt.to_hf().config
    assert (hc.vocab_size, hc.n_positions, hc.n_ctx, hc.n_layer, hc.n_head, hc.n_embd) == (
        100, 16, 16, 2, 2, 32)  # fmt: skip
    assert hc.activation_function == "gelu_new" and hc.n_inner is None
    assert hc.resid_pdrop == hc.embd_pdrop == hc.attn_pdrop == 0.1
    assert hc.layer_norm_epsilon == 1e-6 and hc.tie_word_embeddings
    # eps barely moves the logits (it hides under the variance), so check every LayerNorm's.
    norms = [m for m in gpt.modules() if isinstance(m, nn.LayerNorm)]
    assert len(norms) == 2 * 2 + 1 and all(m.eps == 1e-6 for m in norms)
    assert GPT.from_hf(gpt.to_hf()).config == gpt.config


@torch.no_grad()
def test_attention_weights_match_hf_output_attentions():
    hf = make_hf(*SHAPES["odd_heads"])
    gpt = GPT.from_hf(hf)
    ids = random_ids(hf.config.vocab_size)
    expected = hf(ids, output_attentions=True).attentions
    actual = gpt(ids, need_weights=True).attentions
    assert len(actual) == len(expected) == 3
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, atol=ATOL_SMALL, rtol=0)


def test_from_hf_rejects_what_the_course_model_cannot_express():
    hf = make_hf(*SHAPES["tiny"])
    hf.config.activation_function = "gelu"
    with pytest.raises(ValueError, match=r"activation_function='gelu' is not GPT-2's"):
        GPT.from_hf(hf)
    hf.config.activation_function = "gelu_new"
    hf.config.attn_pdrop = 0.1
    with pytest.raises(ValueError, match="one dropout rate"):
        GPT.from_hf(hf)
    with pytest.raises(ValueError, match=r"needs a transformers\.GPT2LMHeadModel"):
        GPT.from_hf(hf.transformer)


# --- the architecture --------------------------------------------------------------------------


def test_presets():
    course = GPTConfig.course()
    assert (course.vocab_size, course.block_size, course.n_layer, course.n_head, course.n_embd) == (
        VOCAB_SIZE, 128, 3, 4, 128)  # fmt: skip
    assert GPTConfig.course(n_layer=6).n_layer == 6
    gpt2 = GPTConfig.gpt2()
    assert (gpt2.vocab_size, gpt2.block_size, gpt2.n_layer, gpt2.n_head, gpt2.n_embd) == (
        50257, 1024, 12, 12, 768)  # fmt: skip
    assert gpt2.positions == "learned" and gpt2.bias and gpt2.layer_norm_epsilon == 1e-5


def test_blocks_are_gpt2_shaped_and_projections_are_plain_linear():
    gpt = tiny_model()
    assert gpt.lm_head.weight is gpt.transformer.wte.weight  # weight tying
    block = gpt.transformer.h[0]
    assert isinstance(block, Block) and isinstance(block.mlp, MLP)
    for layer in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj):
        assert type(layer) is nn.Linear
    assert block.mlp.c_fc.out_features == 4 * 32
    assert block.mlp.gelu.approximate == "tanh"


def test_projections_are_each_blocks_four_linears_in_order():
    gpt = tiny_model(n_layer=3)
    parts = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    names = [f"transformer.h.{i}.{part}" for i in range(3) for part in parts]
    layers = list(gpt.projections())
    assert [name for name, _ in layers] == names and len(layers) == 4 * gpt.config.n_layer
    assert all(layer is gpt.get_submodule(name) for name, layer in layers)
    C = 32
    shapes = [tuple(layer.weight.shape) for _, layer in layers[:4]]  # nn.Linear's (out, in)
    assert shapes == [(3 * C, C), (C, C), (4 * C, C), (C, 4 * C)]


def test_lora_quantization_and_pruning_change_exactly_the_projections():
    from course_lib.compress.prune import magnitude_masks
    from course_lib.compress.quantize import Int8Linear, quantize_int8
    from course_lib.finetune import LoRALinear, add_lora

    names = [name for name, _ in tiny_model().projections()]
    lora = add_lora(tiny_model(), rank=2, targets=["c_attn", "c_proj", "c_fc"])
    assert [n for n, m in lora.named_modules() if isinstance(m, LoRALinear)] == names
    lora = add_lora(tiny_model(), rank=2, targets=["c_proj"])  # peft's naming: attn's and mlp's
    wrapped = [n for n, m in lora.named_modules() if isinstance(m, LoRALinear)]
    assert wrapped == [n for n in names if n.endswith("c_proj")]
    int8 = quantize_int8(tiny_model())
    quantized = {
        n for n, m in int8.named_modules(remove_duplicate=False) if isinstance(m, Int8Linear)
    }
    assert quantized == {*names, "lm_head", "transformer.wte.head"}  # wte holds the tied lm_head
    assert list(magnitude_masks(tiny_model(), 0.5)) == [f"{n}.weight" for n in names]


def test_importing_the_model_loads_no_corpus_code():
    """course_lib.model needs only the config: not the corpus, its download or the tokenizer."""
    code = "import sys, course_lib.model; print(*sys.modules)"
    root = Path(__file__).resolve().parent.parent  # cwd first on sys.path: this checkout's code
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    loaded = set(run.stdout.split())
    assert run.returncode == 0 and "course_lib.model" in loaded, run.stderr
    assert not loaded & {"course_lib.data", "course_lib.download", "course_lib.tokenizer"}


@torch.no_grad()
def test_a_projection_can_be_wrapped_by_assignment():
    """What LoRA (Lesson 07) and int8 layers (Lesson 08) do: replace a Linear with a wrapper."""

    class Doubled(nn.Module):
        def __init__(self, inner: nn.Linear) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: Tensor) -> Tensor:
            return 2 * self.inner(x)

    gpt, ids = tiny_model(), random_ids(100)
    before = gpt(ids).logits
    block = gpt.transformer.h[1]
    block.attn.c_attn = Doubled(block.attn.c_attn)
    assert not torch.allclose(gpt(ids).logits, before)
    block.attn.c_attn = block.attn.c_attn.inner
    assert torch.equal(gpt(ids).logits, before)


def test_untrained_loss_is_about_ln_vocab_size(course_model):
    T = course_model.config.block_size
    ids = random_ids(VOCAB_SIZE, B=8, T=T + 1, seed=4)
    with torch.no_grad():
        loss = course_model(ids[:, :-1], targets=ids[:, 1:]).loss
    assert abs(loss.item() - math.log(VOCAB_SIZE)) < LN_VOCAB_TOL


def test_gpt2_initialisation():
    config = GPTConfig(vocab_size=512, block_size=64, n_layer=8, n_head=4, n_embd=128)
    for scaled, c_proj_std in ((True, 0.02 / math.sqrt(2 * 8)), (False, 0.02)):
        torch.manual_seed(0)
        gpt = GPT(config, scaled_residual_init=scaled)
        blocks = gpt.transformer.h
        c_proj = torch.cat(
            [
                torch.cat([b.attn.c_proj.weight.flatten(), b.mlp.c_proj.weight.flatten()])
                for b in blocks
            ]
        )
        # 8 layers x (128^2 + 512 * 128) = 655,360 draws: the sample std is within 1% of sigma.
        assert c_proj.std().item() == pytest.approx(c_proj_std, rel=0.01)
        c_attn = torch.cat([b.attn.c_attn.weight.flatten() for b in blocks])
        assert c_attn.std().item() == pytest.approx(0.02, rel=0.01)
        assert gpt.transformer.wte.weight.std().item() == pytest.approx(0.02, rel=0.01)
        assert gpt.transformer.wpe.weight.std().item() == pytest.approx(0.02, rel=0.02)
        for name, p in gpt.named_parameters():
            if name.endswith("bias"):
                assert not p.any(), name
            elif ".ln_" in name:
                assert torch.all(p == 1), name


def test_param_counts_by_part():
    gpt = tiny_model()  # V=100, T=16, L=2, C=32
    C, L = 32, 2
    assert gpt.param_counts() == {
        "embeddings": 100 * C + 16 * C,  # wte (= lm_head) and wpe
        "attention": L * (C * 3 * C + 3 * C + C * C + C),  # c_attn, c_proj
        "mlp": L * (C * 4 * C + 4 * C + 4 * C * C + C),  # c_fc, c_proj
        "layernorms": (2 * L + 1) * 2 * C,  # ln_1, ln_2 per block and ln_f
    }
    assert gpt.num_params(non_embedding=True) == gpt.num_params() - (100 + 16) * C


# --- attention weights and the KV cache --------------------------------------------------------


@torch.no_grad()
def test_need_weights_returns_causal_rows_summing_to_one():
    gpt, ids = tiny_model(), random_ids(100, B=2, T=10)
    fused = gpt(ids)
    out = gpt(ids, need_weights=True)
    assert fused.attentions is None
    assert len(out.attentions) == gpt.config.n_layer
    future = ~torch.ones(10, 10, dtype=torch.bool).tril()
    for att in out.attentions:
        assert att.shape == (2, gpt.config.n_head, 10, 10)
        torch.testing.assert_close(att.sum(-1), torch.ones(2, 2, 10), atol=ATOL_SMALL, rtol=0)
        assert torch.all(att[..., future] == 0)
    torch.testing.assert_close(out.logits, fused.logits, atol=ATOL_SMALL, rtol=0)


@pytest.mark.parametrize("positions", ["learned", "sinusoidal"])
@torch.no_grad()
def test_kv_cache_one_token_at_a_time_equals_the_full_forward(positions):
    gpt, ids = tiny_model(positions=positions), random_ids(100, B=2, T=16)
    full = gpt(ids).logits
    cache = gpt.new_kv_cache()
    assert len(cache) == 2 and all(isinstance(c, KVCache) for c in cache)
    steps = [gpt(ids[:, t : t + 1], kv_cache=cache).logits for t in range(16)]
    assert all(c.length == 16 for c in cache)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=KV_ATOL, rtol=0)
    # A prompt in one go, then a chunk, then single tokens: positions continue where they were.
    cache = gpt.new_kv_cache()
    chunks = [gpt(ids[:, a:b], kv_cache=cache, need_weights=True) for a, b in
              ((0, 7), (7, 12), (12, 13), (13, 16))]  # fmt: skip
    torch.testing.assert_close(
        torch.cat([c.logits for c in chunks], dim=1), full, atol=KV_ATOL, rtol=0
    )
    assert chunks[1].attentions[0].shape == (2, 2, 5, 12)  # 5 new queries, 12 keys so far


@torch.no_grad()
def test_kv_cache_uses_the_positions_after_the_cached_tokens():
    """Without the offset the lone token would sit at position 0 and get other logits."""
    gpt, ids = tiny_model(), random_ids(100, B=1, T=5)
    cache = gpt.new_kv_cache()
    gpt(ids[:, :4], kv_cache=cache)
    last = gpt(ids[:, 4:], kv_cache=cache).logits
    torch.testing.assert_close(last, gpt(ids).logits[:, 4:], atol=KV_ATOL, rtol=0)
    assert not torch.allclose(last, gpt(ids[:, 4:]).logits, atol=1e-3)


# --- sinusoidal positions ----------------------------------------------------------------------


def test_sinusoidal_positions_are_a_fixed_buffer():
    gpt = tiny_model(positions="sinusoidal")
    assert torch.equal(gpt.pe, sinusoidal_encoding(16, 32))
    assert "wpe" not in gpt.transformer
    assert all("pe" not in name for name, _ in gpt.named_parameters())
    assert "pe" not in gpt.state_dict()  # recomputed, not saved
    assert gpt.num_params() == tiny_model().num_params() - 16 * 32
    with torch.no_grad():
        out = gpt(random_ids(100, T=8), targets=random_ids(100, T=8, seed=5))
    assert out.logits.shape == (2, 8, 100) and torch.isfinite(out.loss)
    with pytest.raises(ValueError, match="to_hf needs positions='learned'"):
        gpt.to_hf()


# --- clear errors ------------------------------------------------------------------------------


def test_too_long_a_sequence_says_how_to_crop(course_model):
    idx = torch.zeros(1, 300, dtype=torch.long)
    msg = "sequence of 300 tokens is longer than the context block_size=128: crop to the last 128"
    with pytest.raises(ValueError, match=msg):
        course_model(idx)


@pytest.mark.parametrize("bad", [2048, -1])
def test_token_ids_outside_the_vocabulary(course_model, bad):
    idx = torch.tensor([[1, 2, bad, 3]])
    with pytest.raises(ValueError, match=rf"token id {bad} is outside the vocabulary \[0, 2048\)"):
        course_model(idx)


@pytest.mark.parametrize(
    "idx",
    [torch.zeros(5, dtype=torch.long), torch.zeros(1, 5), torch.zeros(1, 2, 5, dtype=torch.long)],
)
def test_idx_must_be_2d_integer(idx):
    with pytest.raises(
        ValueError, match=r"idx must be a 2-D tensor of integer token ids, \(B, T\)"
    ):
        tiny_model()(idx)


def test_targets_must_fit_idx():
    gpt, ids = tiny_model(), random_ids(100, T=8)
    with pytest.raises(
        ValueError, match=r"targets must have the shape of idx, \(B, T\) = \(2, 8\)"
    ):
        gpt(ids, targets=ids[:, 1:])
    with pytest.raises(ValueError, match=r"target 100 is outside the vocabulary \[0, 100\)"):
        gpt(ids, targets=torch.full_like(ids, 100))
    with pytest.raises(ValueError, match="targets must be integer token ids"):
        gpt(ids, targets=ids.float())


def test_kv_cache_errors():
    gpt = tiny_model()
    with pytest.raises(ValueError, match=r"kv_cache must be a list of 2 KVCache.*new_kv_cache\(\)"):
        gpt(random_ids(100), kv_cache=[KVCache()])
    cache = gpt.new_kv_cache()
    gpt(random_ids(100, T=12), kv_cache=cache)
    with pytest.raises(ValueError, match=r"holds 12 tokens and 5 more make 17.*block_size=16"):
        gpt(random_ids(100, T=5), kv_cache=cache)
    assert cache[0].length == 12  # the failed call left the cache as it was


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (dict(n_embd=100, n_head=3), r"n_embd=100 is not divisible by n_head=3.*\(1, 2, 4, 5,"),
        (dict(n_layer=0), r"n_layer=0, expected a positive integer"),
        (dict(vocab_size=-5), r"vocab_size=-5, expected a positive integer"),
        (
            dict(positions="rotary"),
            r"positions='rotary', expected one of \('learned', 'sinusoidal'\)",
        ),
        (dict(n_embd=33, n_head=3, positions="sinusoidal"), r"needs an even n_embd.*n_embd=33"),
        (dict(dropout=1.0), r"dropout=1.0, expected a probability in \[0, 1\)"),
    ],
)
def test_config_errors(change, match):
    config = dict(vocab_size=100, block_size=16, n_layer=2, n_head=2, n_embd=32)
    with pytest.raises(ValueError, match=match):
        GPTConfig(**{**config, **change})


# --- what later lessons need: hidden states, no host synchronisation ------------------------------


def test_forward_returns_the_final_hidden_states_that_lm_head_reads():
    model = tiny_model()
    idx = random_ids(100)
    out = model(idx)
    assert out.hidden.shape == (2, 16, 32)  # (B, T, C), after ln_f
    torch.testing.assert_close(model.lm_head(out.hidden), out.logits, atol=0, rtol=0)
    features = model(idx, with_logits=False)
    assert features.logits is None and features.loss is None
    assert torch.equal(features.hidden, out.hidden)


def test_forward_off_the_cpu_reads_no_values_back_to_the_host():
    # A meta tensor has shapes but no values: .item(), which waits for a GPU on every forward,
    # raises on it. So a forward that runs on meta tensors never synchronises with the host.
    model = tiny_model().to("meta")
    idx = torch.zeros(2, 16, dtype=torch.long, device="meta")
    out = model(idx, targets=idx)
    assert out.logits.shape == (2, 16, 100) and out.loss.shape == ()
    with pytest.raises(ValueError, match="outside the vocabulary"):  # on the CPU, still checked
        tiny_model()(torch.full((1, 4), 100))
