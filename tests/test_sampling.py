"""course_lib.sampling: the filters against Hugging Face's logits warpers, the KV cache against
the uncached reference (inside and past the context), seeds, stop tokens, and clear errors.

Tolerances: the filters are exact (the same tokens kept, the same values); cached and uncached
logits agree within 1e-5 (float32 sums in another order; measured below 2e-6).
"""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from course_lib import sampling
from course_lib.model import GPT, GPTConfig
from course_lib.sampling import generate, next_token, stream, top_k_filter, top_p_filter


def random_logits(seed: int = 0, B: int = 4, V: int = 50) -> torch.Tensor:
    return torch.randn(B, V, generator=torch.Generator().manual_seed(seed)) * 3


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32)
    model = GPT(config).eval()
    with torch.no_grad():  # sharper than an untrained model's near-uniform scores
        model.lm_head.weight.mul_(20)
    return model


def record_logits(monkeypatch) -> list[torch.Tensor]:
    seen = []
    original = sampling.next_token

    def spy(logits, *args):
        seen.append(logits.clone())
        return original(logits, *args)

    monkeypatch.setattr(sampling, "next_token", spy)
    return seen


# --- the filters, against transformers --------------------------------------------------------


@pytest.mark.parametrize("k", [1, 5, 49, 50, 80])
def test_top_k_matches_transformers_top_k_warper(k):
    logits = random_logits(k)
    want = TopKLogitsWarper(top_k=k)(None, logits.clone())
    assert torch.equal(top_k_filter(logits, k), want)


@pytest.mark.parametrize("p", [0.05, 0.5, 0.9, 0.99, 1.0])
def test_top_p_matches_transformers_top_p_warper(p):
    for seed in range(5):
        logits = random_logits(seed)
        want = TopPLogitsWarper(top_p=p)(None, logits.clone())
        assert torch.equal(top_p_filter(logits, p), want), (p, seed)


@pytest.mark.parametrize("t", [0.3, 1.0, 2.5])
def test_temperature_matches_transformers_temperature_warper(t):
    logits = random_logits()
    want = TemperatureLogitsWarper(temperature=t)(None, logits.clone())
    assert torch.allclose(logits / t, want)


def test_top_p_keeps_the_fewest_tokens_that_hold_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(top_p_filter(logits, 0.75))
    assert kept.tolist() == [[True, True, False, False]]  # 0.5 < 0.75 <= 0.5 + 0.3
    assert torch.isfinite(top_p_filter(logits, 0.01)).sum() == 1  # the top token stays


def test_top_k_one_is_greedy():
    logits = random_logits()
    ids = next_token(logits, top_k=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ids, logits.argmax(-1, keepdim=True))


def test_sampling_follows_the_distribution():
    probs = torch.tensor([0.6, 0.3, 0.1])
    g = torch.Generator().manual_seed(0)
    draws = next_token(probs.log().expand(20_000, 3), generator=g).flatten()
    freq = torch.bincount(draws, minlength=3) / len(draws)
    assert torch.allclose(freq, probs, atol=0.01)


# --- generation: the KV cache against the uncached reference ----------------------------------


@pytest.mark.parametrize("prompt_len", [1, 5, 16, 23])
def test_kv_cache_gives_the_same_logits_and_ids_inside_and_past_the_context(
    model, monkeypatch, prompt_len
):
    ids = torch.randint(0, 64, (2, prompt_len), generator=torch.Generator().manual_seed(1))
    seen = record_logits(monkeypatch)
    options = dict(temperature=0.8, top_k=20)
    cached = generate(model, ids, 40, generator=torch.Generator().manual_seed(7), **options)
    with_cache, seen[:] = list(seen), []
    plain = generate(model, ids, 40, generator=torch.Generator().manual_seed(7),
                     use_cache=False, **options)  # fmt: skip
    assert torch.equal(cached, plain)  # 40 new tokens: past the 16-token context
    assert cached.shape == (2, prompt_len + 40)
    for step, (a, b) in enumerate(zip(with_cache, seen)):
        assert torch.allclose(a, b, atol=1e-5, rtol=0), step


def test_uncached_window_is_the_documented_one(model, monkeypatch):
    # 16-token context: a 20-token prompt is cut to its last 16; once 17 would be needed, the
    # model goes on from the last 8.
    ids = torch.randint(0, 64, (1, 20), generator=torch.Generator().manual_seed(2))
    lengths = []
    original = model.forward

    def spy(idx, *args, **kwargs):
        lengths.append(idx.size(1))
        return original(idx, *args, **kwargs)

    monkeypatch.setattr(model, "forward", spy)
    generate(model, ids, 12, greedy=True, use_cache=False)
    assert lengths == [16, 8, 9, 10, 11, 12, 13, 14, 15, 16, 8, 9]
    lengths.clear()
    generate(model, ids, 12, greedy=True)
    assert lengths == [16, 8, 1, 1, 1, 1, 1, 1, 1, 1, 8, 1]


def test_greedy_takes_the_argmax_of_the_full_forward(model):
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    out = generate(model, ids, 6, greedy=True)
    seq = ids
    for _ in range(6):
        with torch.no_grad():
            nxt = model(seq).logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], dim=1)
    assert torch.equal(out, seq)


def test_the_same_seed_gives_the_same_tokens_another_seed_others(model):
    ids = torch.tensor([[1, 2, 3]])
    a = generate(model, ids, 30, generator=torch.Generator().manual_seed(0))
    b = generate(model, ids, 30, generator=torch.Generator().manual_seed(0))
    c = generate(model, ids, 30, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_stream_yields_what_generate_returns(model):
    ids = torch.tensor([[5, 6]])
    parts = list(stream(model, ids, 10, generator=torch.Generator().manual_seed(3)))
    whole = generate(model, ids, 10, generator=torch.Generator().manual_seed(3))
    assert all(p.shape == (1, 1) for p in parts)
    assert torch.equal(torch.cat([ids, *parts], dim=1), whole)


def test_stops_at_the_stop_token_and_pads_rows_that_stopped(model):
    ids = torch.tensor([[5, 6], [7, 8]])
    free = generate(model, ids, 30, generator=torch.Generator().manual_seed(4))
    stop = free[0, 2:][5].item()  # a token row 0 produces on the way
    out = generate(model, ids, 30, generator=torch.Generator().manual_seed(4), stop_token=stop)
    first = (out[0, 2:] == stop).nonzero()[0].item()
    assert torch.equal(out[0, 2 : 2 + first + 1], free[0, 2 : 2 + first + 1])
    assert (out[0, 2 + first :] == stop).all()  # stopped rows repeat it
    reached = (out[:, 2:] == stop).any(dim=1)
    assert reached.all() if out.size(1) < 32 else reached[0]  # all stopped, or 30 tokens made


def test_generate_restores_the_training_mode(model):
    model.train()
    generate(model, torch.tensor([[1]]), 2)
    assert model.training
    model.eval()


# --- clear errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(temperature=0), r"temperature must be > 0, got 0: .* greedy=True"),
        (dict(temperature=-1.0), r"temperature must be > 0, got -1.0"),
        (dict(top_k=0), r"top_k must be an integer >= 1 .* got 0"),
        (dict(top_k=2.5), r"top_k must be an integer >= 1 .* got 2.5"),
        (dict(top_p=0), r"top_p must be in \(0, 1\], got 0"),
        (dict(top_p=1.5), r"top_p must be in \(0, 1\], got 1.5"),
    ],
)
def test_bad_sampling_parameters_are_named(model, options, message):
    with pytest.raises(ValueError, match=message):
        generate(model, torch.tensor([[1]]), 3, **options)


def test_empty_prompt_and_bad_shapes_are_explained(model):
    with pytest.raises(ValueError, match="the prompt is empty"):
        generate(model, torch.zeros(1, 0, dtype=torch.long), 3)
    with pytest.raises(ValueError, match=r"\(B, T\) tensor .* torch.tensor\(\[tokenizer"):
        generate(model, torch.tensor([1, 2]), 3)
    with pytest.raises(ValueError, match="max_new_tokens must be an integer >= 0, got -1"):
        generate(model, torch.tensor([[1]]), -1)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        generate(model, torch.tensor([[999]]), 3)


def test_zero_new_tokens_returns_the_prompt(model):
    ids = torch.tensor([[1, 2]])
    assert torch.equal(generate(model, ids, 0), ids)


# --- the command line -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A tiny model of the course tokenizer's vocabulary, saved with and without the tokenizer."""
    from course_lib.checkpoint import save_checkpoint
    from course_lib.data import VOCAB_SIZE, course_tokenizer

    torch.manual_seed(0)
    tiny = GPT(GPTConfig(vocab_size=VOCAB_SIZE, block_size=16, n_layer=1, n_head=2, n_embd=16))
    root = tmp_path_factory.mktemp("ckpt")
    save_checkpoint(root / "with", tiny, course_tokenizer())
    save_checkpoint(root / "without", tiny)
    return root


def test_cli_sample_streams_the_same_text_as_generate(checkpoints, capsys):
    from course_lib import cli
    from course_lib.checkpoint import load_checkpoint

    args = ["sample", "--checkpoint", str(checkpoints / "with"), "--prompt", "ROMEO:",
            "--max-new-tokens", "20", "--top-k", "50", "--seed", "3"]  # fmt: skip
    assert cli.main(args) == 0
    ckpt = load_checkpoint(checkpoints / "with")
    ids = torch.tensor([ckpt.tokenizer.encode("ROMEO:")])
    want = generate(ckpt.model, ids, 20, top_k=50, generator=torch.Generator().manual_seed(3))
    assert capsys.readouterr().out == ckpt.tokenizer.decode(want[0].tolist()) + "\n"


def test_cli_sample_errors_name_the_problem(checkpoints, capsys):
    from course_lib import cli

    with_tok, without = str(checkpoints / "with"), str(checkpoints / "without")
    assert cli.main(["sample", "--checkpoint", without, "--prompt", "Hi"]) == 1
    assert "has no tokenizer.json, so a prompt cannot become token ids" in capsys.readouterr().err
    assert cli.main(["sample", "--checkpoint", with_tok, "--temperature", "0"]) == 2  # usage
    assert "temperature must be > 0, got 0.0" in capsys.readouterr().err
    assert cli.main(["sample", "--checkpoint", with_tok, "--prompt", ""]) == 1
    assert "the prompt is empty" in capsys.readouterr().err
    assert cli.main(["sample", "--checkpoint", with_tok, "--prompt", "x " * 40,
                     "--max-new-tokens", "2"]) == 0  # fmt: skip
    assert "longer than the context: the model sees its last 16" in capsys.readouterr().err
