"""course_lib.positional: the sinusoidal table is Vaswani et al.'s formula, with the properties
Lesson 02 shows. The reference is the formula written out with Python's `math`, one number at
a time, apart from the vectorised torch code under test."""

import math

import pytest
import torch

from course_lib.positional import sinusoidal_encoding

# The table is computed in float64 and stored in float32, whose rounding of a value in [-1, 1]
# is at most 2^-24 ~ 6e-8: 1e-6 leaves room for the float64 angles differing in the last bit.
ATOL = 1e-6
# A dot product of two rows sums `dim` such products, each off by up to ~1.2e-7 from float32
# rounding: for dim <= 64 that is under 1e-5.
DOT_ATOL = 1e-5


def formula(n_positions: int, dim: int, base: float = 10000.0) -> list[list[float]]:
    """Vaswani et al., section 3.5: PE(pos, 2i) = sin(pos / base^(2i/dim)), PE(pos, 2i+1) = cos."""
    table = [[0.0] * dim for _ in range(n_positions)]
    for pos in range(n_positions):
        for i in range(dim // 2):
            angle = pos / base ** (2 * i / dim)
            table[pos][2 * i] = math.sin(angle)
            table[pos][2 * i + 1] = math.cos(angle)
    return table


@pytest.mark.parametrize(("n_positions", "dim", "base"), [(512, 64, 10000.0), (7, 6, 100.0)])
def test_values_match_vaswani_formula_written_with_math(n_positions, dim, base):
    pe = sinusoidal_encoding(n_positions, dim, base)
    expected = torch.tensor(formula(n_positions, dim, base), dtype=torch.float64)
    assert pe.shape == (n_positions, dim) and pe.dtype == torch.float32
    torch.testing.assert_close(pe.double(), expected, atol=ATOL, rtol=0)


def test_position_zero_is_sin_on_even_dims_cos_on_odd_dims():
    # sin 0 = 0 on the even dims, cos 0 = 1 on the odd dims: exactly [0, 1, 0, 1, ...].
    assert sinusoidal_encoding(4, 10)[0].tolist() == [0.0, 1.0] * 5


def test_first_pair_is_sin_and_cos_of_the_position_in_radians():
    # i = 0: angle = pos / base^0 = pos, so dims 0 and 1 turn one radian per position
    pe = sinusoidal_encoding(5, 12)
    pos = torch.arange(5.0)
    torch.testing.assert_close(pe[:, 0], torch.sin(pos), atol=ATOL, rtol=0)
    torch.testing.assert_close(pe[:, 1], torch.cos(pos), atol=ATOL, rtol=0)


def test_every_row_has_norm_sqrt_half_dim():
    # sin^2 + cos^2 = 1 for each of the dim/2 pairs
    pe = sinusoidal_encoding(300, 64).double()
    torch.testing.assert_close(
        pe.norm(dim=1),
        torch.full((300,), math.sqrt(32.0), dtype=torch.float64),
        atol=DOT_ATOL,
        rtol=0,
    )


def test_dot_product_depends_only_on_offset():
    pe = sinusoidal_encoding(200, 64).double()
    for offset in (0, 1, 5, 37):
        dots = (pe[: 200 - offset] * pe[offset:]).sum(dim=1)  # <pe[p], pe[p + offset]> for all p
        torch.testing.assert_close(dots, dots[0].expand_as(dots), atol=DOT_ATOL, rtol=0)


def test_shift_by_k_is_a_rotation_that_does_not_depend_on_position():
    # Vaswani et al.: "PE(pos+k) can be represented as a linear function of PE(pos)".
    # For each pair, (sin(a+b), cos(a+b)) = [[cos b, sin b], [-sin b, cos b]] (sin a, cos a),
    # where b is position k's angle for that pair: the same rotation for every pos.
    pe = sinusoidal_encoding(100, 8).double()
    k = 9
    sin_b, cos_b = pe[k, 0::2], pe[k, 1::2]  # (4,)
    sin_a, cos_a = pe[:-k, 0::2], pe[:-k, 1::2]  # (91, 4)
    torch.testing.assert_close(pe[k:, 0::2], cos_b * sin_a + sin_b * cos_a, atol=DOT_ATOL, rtol=0)
    torch.testing.assert_close(pe[k:, 1::2], -sin_b * sin_a + cos_b * cos_a, atol=DOT_ATOL, rtol=0)


@pytest.mark.parametrize("dim", [7, 1, 0])
def test_odd_or_zero_dim_is_rejected_with_the_fix(dim):
    with pytest.raises(ValueError, match=rf"dim={dim}, expected an even number >= 2.*Use dim="):
        sinusoidal_encoding(10, dim)


def test_zero_positions_are_rejected():
    with pytest.raises(ValueError, match=r"n_positions=0, expected >= 1"):
        sinusoidal_encoding(0, 8)
