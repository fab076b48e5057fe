"""The fold arithmetic: float64 products rounded once, whatever path numpy takes."""

from __future__ import annotations

import numpy as np
import pytest

from bnfold.numerics import (
    NotRepresentable,
    batchnorm_affine,
    conv_input_shift,
    multiply_exactly,
    round_to,
    scale_conv_inputs,
)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_multiply_exactly_equals_float64_then_one_rounding(rng, dtype):
    weight = rng.standard_normal([64, 3, 5, 5]).astype(dtype)
    factors = rng.uniform(0.1, 3.0, [64, 1, 1, 1])
    expected = (weight.astype(np.float64) * factors).astype(dtype)
    got = multiply_exactly(weight, factors)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, expected)


def test_batchnorm_affine_matches_the_definition(rng):
    gamma, beta, mean = rng.normal(size=(3, 8))
    var = rng.uniform(0.1, 2, 8)
    affine = batchnorm_affine(gamma, beta, mean, var, 1e-3)
    x = rng.normal(size=8)
    eps = np.float64(np.float32(1e-3))
    np.testing.assert_allclose(
        affine.scale * x + affine.shift, gamma * (x - mean) / np.sqrt(var + eps) + beta, rtol=1e-12
    )


def test_overflow_is_reported():
    with pytest.raises(NotRepresentable, match="overflow float16"):
        round_to(np.array([1e6]), np.dtype(np.float16))


@pytest.mark.parametrize(("c_out", "c_in", "group"), [(6, 4, 1), (6, 4, 2), (4, 4, 4), (8, 4, 4)])
def test_forward_conv_maths_follows_the_grouped_layout(rng, c_out, c_in, group):
    """Input channel c is column c % (C_in/group) of the rows of group c // (C_in/group)."""
    weight = rng.normal(0, 1, [c_out, c_in // group, 3, 2])
    scale, shift = rng.uniform(0.5, 2, c_in), rng.normal(0, 1, c_in)
    want_weight = weight.copy()
    want_shift = np.zeros(c_out)
    for o in range(c_out):
        g = o // (c_out // group)
        for j in range(c_in // group):
            channel = g * (c_in // group) + j
            want_weight[o, j] *= scale[channel]
            want_shift[o] += weight[o, j].sum() * shift[channel]
    np.testing.assert_array_equal(scale_conv_inputs(weight, scale, group), want_weight)
    np.testing.assert_allclose(conv_input_shift(weight, shift, group), want_shift, rtol=1e-12)


def test_multiply_exactly_refuses_an_out_it_cannot_round_into():
    import ml_dtypes

    weights = np.ones((2, 2), dtype=ml_dtypes.bfloat16)
    with pytest.raises(TypeError, match="cannot round into bfloat16"):
        multiply_exactly(weights, np.ones((2, 1)), out=np.empty_like(weights))
