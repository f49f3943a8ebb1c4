"""course_lib.attention: each test states one behaviour and, where there is one, its reference.

The references are PyTorch's own: `torch.nn.functional.scaled_dot_product_attention` for the
attention function (boolean masks there also mean True = allowed) and `torch.nn.MultiheadAttention`
loaded with the same weights for the module (its boolean masks mean the opposite, True = blocked,
hence the `~causal_mask(T)` below). The KV cache's reference is the same module run without one.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course_lib.attention import (
    KVCache,
    MultiHeadAttention,
    causal_mask,
    merge_heads,
    scaled_dot_product_attention,
    split_heads,
)

# float32 carries about 7 significant digits (eps = 1.2e-7). Our explicit steps and PyTorch's
# fused kernels compute the same sums in different orders (and scale q, k separately), so on
# values of order 1 they agree to a few eps, not bit for bit: 1e-6 absolute plus 1e-5 relative.
ATOL, RTOL = 1e-6, 1e-5


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=RTOL)


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def random_mask(*shape: int, seed: int = 0) -> torch.Tensor:
    """A random boolean mask (True = allowed) whose every row allows at least its first key."""
    mask = torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) < 0.5
    mask[..., 0] = True
    return mask


def make_mha(n_embd: int = 32, n_head: int = 4, causal: bool = True) -> MultiHeadAttention:
    torch.manual_seed(0)
    return MultiHeadAttention(n_embd, n_head, causal=causal).eval()


def torch_mha_with_same_weights(mha: MultiHeadAttention) -> nn.MultiheadAttention:
    ref = nn.MultiheadAttention(mha.n_embd, mha.n_head, batch_first=True).eval()
    with torch.no_grad():
        ref.in_proj_weight.copy_(mha.c_attn.weight)  # (3C, C), q|k|v stacked in both
        ref.in_proj_bias.copy_(mha.c_attn.bias)
        ref.out_proj.weight.copy_(mha.c_proj.weight)
        ref.out_proj.bias.copy_(mha.c_proj.bias)
    return ref


# --- the causal mask ---------------------------------------------------------------------------


def test_causal_mask_allows_each_query_the_keys_up_to_itself():
    T = 6
    expected = torch.tensor([[j <= i for j in range(T)] for i in range(T)])
    mask = causal_mask(T)
    assert mask.dtype == torch.bool and mask.shape == (T, T)
    assert torch.equal(mask, expected)


def test_causal_mask_equals_torch_is_causal():
    q, k, v = randn(2, 3, 5, 8, seed=1), randn(2, 3, 5, 8, seed=2), randn(2, 3, 5, 8, seed=3)
    out, _ = scaled_dot_product_attention(q, k, v, causal_mask(5))
    close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True))


# --- scaled_dot_product_attention --------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5, 8), (2, 5, 8), (2, 3, 5, 8)], ids=["2d", "3d", "4d"])
def test_attention_matches_torch_sdpa_without_mask(shape):
    q, k, v = randn(*shape, seed=1), randn(*shape, seed=2), randn(*shape, seed=3)
    out, weights = scaled_dot_product_attention(q, k, v)
    close(out, F.scaled_dot_product_attention(q, k, v))
    assert weights.shape == (*shape[:-1], shape[-2])


def test_attention_matches_torch_sdpa_with_boolean_mask():
    q, k, v = randn(2, 3, 5, 8, seed=1), randn(2, 3, 5, 8, seed=2), randn(2, 3, 5, 8, seed=3)
    mask = random_mask(2, 1, 5, 5)  # one mask per batch row, broadcast over the 3 heads
    out, _ = scaled_dot_product_attention(q, k, v, mask)
    close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))


@pytest.mark.parametrize("with_mask", [False, True], ids=["no-mask", "mask"])
def test_attention_matches_torch_sdpa_when_T_q_differs_from_T_k(with_mask):
    # 4 queries, 7 keys, values of a different width (d_v = 5) than queries and keys (d_k = 8)
    q, k, v = randn(2, 3, 4, 8, seed=1), randn(2, 3, 7, 8, seed=2), randn(2, 3, 7, 5, seed=3)
    mask = random_mask(4, 7) if with_mask else None
    out, weights = scaled_dot_product_attention(q, k, v, mask)
    close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    assert out.shape == (2, 3, 4, 5) and weights.shape == (2, 3, 4, 7)


def test_attention_weights_rows_sum_to_one():
    q, k, v = randn(2, 3, 6, 8, seed=1), randn(2, 3, 6, 8, seed=2), randn(2, 3, 6, 8, seed=3)
    for mask in (None, causal_mask(6), random_mask(6, 6)):
        _, weights = scaled_dot_product_attention(q, k, v, mask)
        close(weights.sum(dim=-1), torch.ones(2, 3, 6))


def test_causal_weights_are_exactly_zero_above_the_diagonal():
    q, k, v = randn(2, 3, 6, 8, seed=1), randn(2, 3, 6, 8, seed=2), randn(2, 3, 6, 8, seed=3)
    _, weights = scaled_dot_product_attention(q, k, v, causal_mask(6))
    future = ~causal_mask(6)
    assert torch.all(weights[..., future] == 0)  # exactly: softmax of -inf is 0
    assert torch.all(weights[..., ~future] > 0)


@pytest.mark.parametrize(
    ("q_shape", "k_shape", "v_shape", "mask", "match"),
    [
        ((2, 5, 8), (2, 5, 6), (2, 5, 8), None, r"same last dim d_k.*\(2, 5, 8\).*\(2, 5, 6\)"),
        ((2, 5, 8), (2, 5, 8), (2, 4, 8), None, r"same length T_k.*\(2, 5, 8\).*\(2, 4, 8\)"),
        ((2, 5, 8), (3, 5, 8), (3, 5, 8), None, r"\(batch, head\) dims .* do not broadcast"),
        ((5,), (5, 8), (5, 8), None, r"at least 2 dims"),
        ((2, 5, 8), (2, 5, 8), (2, 5, 8), torch.ones(4, 5, dtype=torch.bool),
         r"mask of shape \(4, 5\) does not broadcast .* \(2, 5, 5\)"),
        ((2, 5, 8), (2, 5, 8), (2, 5, 8), torch.ones(3, 2, 5, 5, dtype=torch.bool),
         r"mask of shape \(3, 2, 5, 5\) does not broadcast"),
        ((2, 5, 8), (2, 5, 8), (2, 5, 8), torch.ones(5, 5),
         r"mask must be boolean with True = allowed, got dtype torch.float32"),
        ((2, 5, 8), (2, 5, 8), (2, 5, 8), ~causal_mask(5),  # torch.nn.MultiheadAttention's way
         r"a row of the mask is all False.*inverted"),
    ],
    ids=["d_k", "T_k", "batch", "1d", "mask-rows", "mask-dims", "float-mask", "empty-row"],
)  # fmt: skip
def test_attention_rejects_bad_shapes_and_masks(q_shape, k_shape, v_shape, mask, match):
    q, k, v = torch.zeros(q_shape), torch.zeros(k_shape), torch.zeros(v_shape)
    with pytest.raises(ValueError, match=match):
        scaled_dot_product_attention(q, k, v, mask)


# --- heads -------------------------------------------------------------------------------------


def test_split_heads_gives_each_head_its_slice_of_channels():
    x = randn(2, 5, 12)
    heads = split_heads(x, n_head=3)  # (B, n_head, T, head_dim)
    assert heads.shape == (2, 3, 5, 4)
    for h in range(3):
        assert torch.equal(heads[:, h], x[:, :, 4 * h : 4 * (h + 1)])


def test_merge_heads_inverts_split_heads():
    x = randn(2, 5, 12)
    assert torch.equal(merge_heads(split_heads(x, 3)), x)


def test_split_heads_rejects_channels_not_divisible_by_heads():
    with pytest.raises(ValueError, match=r"C divisible by n_head=5, got \(2, 5, 12\)"):
        split_heads(randn(2, 5, 12), 5)


# --- MultiHeadAttention ------------------------------------------------------------------------


def test_mha_has_gpt2_parameter_names_and_shapes():
    shapes = {n: tuple(p.shape) for n, p in MultiHeadAttention(32, 4).state_dict().items()}
    assert shapes == {
        "c_attn.weight": (96, 32),
        "c_attn.bias": (96,),
        "c_proj.weight": (32, 32),
        "c_proj.bias": (32,),
    }
    assert set(MultiHeadAttention(32, 4, bias=False).state_dict()) == {
        "c_attn.weight",
        "c_proj.weight",
    }


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("need_weights", [False, True], ids=["fused", "weights"])
def test_mha_matches_torch_multiheadattention(causal, need_weights):
    mha = make_mha(causal=causal)
    ref = torch_mha_with_same_weights(mha)
    x = randn(3, 7, 32)
    # torch's boolean attn_mask means True = blocked, ours True = allowed: hence the ~
    ref_mask = ~causal_mask(7) if causal else None
    with torch.no_grad():
        y, _ = mha(x, need_weights=need_weights)
        y_ref, _ = ref(x, x, x, attn_mask=ref_mask, need_weights=False)
    close(y, y_ref)


def test_mha_head_averaged_weights_match_torch_multiheadattention():
    mha = make_mha()
    ref = torch_mha_with_same_weights(mha)
    x = randn(3, 7, 32)
    with torch.no_grad():
        _, weights = mha(x, need_weights=True)  # (B, n_head, T, T)
        _, ref_weights = ref(x, x, x, attn_mask=~causal_mask(7), average_attn_weights=True)
    assert weights.shape == (3, 4, 7, 7)
    close(weights.mean(dim=1), ref_weights)


def test_mha_fused_path_and_weights_path_agree():
    mha = make_mha()
    x = randn(3, 7, 32)
    with torch.no_grad():
        y_fused, none = mha(x)
        y_weights, weights = mha(x, need_weights=True)
    assert none is None and weights is not None
    close(y_fused, y_weights)


def test_mha_output_of_a_token_ignores_the_tokens_after_it():
    mha = make_mha()
    x = randn(1, 8, 32)
    x_changed = x.clone()
    x_changed[:, 5:] = randn(1, 3, 32, seed=9)  # change the future of token 4
    with torch.no_grad():
        y, _ = mha(x)
        y_changed, _ = mha(x_changed)
    close(y_changed[:, :5], y[:, :5])


@pytest.mark.parametrize("need_weights", [False, True], ids=["fused", "weights"])
def test_mha_attention_dropout_acts_in_training_only(need_weights):
    torch.manual_seed(0)
    mha = MultiHeadAttention(32, 4, dropout=0.5)
    mha.resid_dropout = nn.Identity()  # leave only the dropout on the attention weights
    x = randn(2, 7, 32)
    with torch.no_grad():
        y_eval, _ = mha.eval()(x, need_weights=need_weights)
        y_reference, _ = mha(x)  # eval: dropout off, the fused path as the reference
        y_train, weights = mha.train()(x, need_weights=need_weights)
    close(y_eval, y_reference)
    assert not torch.allclose(y_train, y_eval, atol=1e-3)
    if need_weights:  # the returned weights are the ones before dropout: rows still sum to 1
        close(weights.sum(dim=-1), torch.ones(2, 4, 7))


def test_mha_rejects_n_embd_not_divisible_by_n_head_listing_the_divisors():
    with pytest.raises(
        ValueError,
        match=r"n_embd=100 is not divisible by n_head=3: pick n_head among the divisors of "
        r"n_embd \(1, 2, 4, 5, 10, 20, 25, 50, 100\)",
    ):
        MultiHeadAttention(100, 3)


def test_mha_rejects_input_of_the_wrong_width():
    with pytest.raises(ValueError, match=r"x must be \(B, T, C\) with C=32, got \(2, 7, 16\)"):
        make_mha()(torch.zeros(2, 7, 16))


# --- the KV cache ------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 3], ids=["token-by-token", "chunks-of-3"])
@pytest.mark.parametrize("need_weights", [False, True], ids=["fused", "weights"])
def test_kv_cache_matches_full_causal_forward(chunk, need_weights):
    # T = 10 in chunks of 3 is 3 + 3 + 3 + 1: the last chunk is shorter, and every chunk after
    # the first has T_q != T_k, where the causal mask must be offset by the cached length.
    mha = make_mha()
    x = randn(2, 10, 32)
    cache = KVCache()
    with torch.no_grad():
        y_full, weights_full = mha(x, need_weights=True)  # (B, T, C), (B, nh, T, T)
        for start in range(0, 10, chunk):
            y, weights = mha(x[:, start : start + chunk], need_weights=need_weights, kv_cache=cache)
            close(y, y_full[:, start : start + chunk])
            if need_weights:  # the chunk's rows of the full weights, up to its last key
                end = start + y.size(1)
                assert weights.shape == (2, 4, end - start, end)
                close(weights, weights_full[:, :, start:end, :end])
    assert cache.length == 10


def test_kv_cache_holds_the_keys_and_values_of_every_token_seen():
    mha = make_mha()
    x = randn(2, 10, 32)
    cache = KVCache()
    assert cache.length == 0
    with torch.no_grad():
        mha(x[:, :4], kv_cache=cache)
        mha(x[:, 4:], kv_cache=cache)
        _, k, v = mha.c_attn(x).split(32, dim=2)
    assert cache.k.shape == cache.v.shape == (2, 4, 10, 8)  # (B, n_head, T_cached, head_dim)
    close(cache.k, split_heads(k, 4))
    close(cache.v, split_heads(v, 4))


def test_kv_cache_rejects_a_different_batch():
    cache = KVCache()
    cache.append(torch.zeros(2, 4, 3, 8), torch.zeros(2, 4, 3, 8))
    with pytest.raises(ValueError, match=r"\(1, 4, 1, 8\) do not fit the cache of shape"):
        cache.append(torch.zeros(1, 4, 1, 8), torch.zeros(1, 4, 1, 8))


def test_kv_cache_rejects_k_and_v_of_different_shapes():
    with pytest.raises(
        ValueError, match=r"k and v must both be .*\(2, 4, 3, 8\) and \(2, 4, 2, 8\)"
    ):
        KVCache().append(torch.zeros(2, 4, 3, 8), torch.zeros(2, 4, 2, 8))
