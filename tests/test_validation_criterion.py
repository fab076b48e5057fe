"""The calibrated limit and explicit tolerances, on arrays (no onnxruntime)."""

from __future__ import annotations

import numpy as np
import pytest

from bnfold.validation import Tolerance, compare
from bnfold.validation.criterion import (
    BLOCK,
    NOISE_FACTOR,
    block_max,
    calibrated_limits,
    on_absolute_grid,
    pooled,
    relative_median,
    trailing_zero_bits,
)
from bnfold.validation.perturb import one_ulp_moved


def test_block_max_pools_consecutive_elements():
    values = np.zeros(2 * BLOCK + 3)
    values[1] = 5.0
    values[BLOCK + 4] = 2.0
    pooled = block_max(values)
    assert np.all(pooled[:BLOCK] == 5.0)
    assert np.all(pooled[BLOCK : 2 * BLOCK] == 2.0)
    assert np.all(pooled[2 * BLOCK :] == 0.0)
    assert block_max(np.ones((3, 5))).shape == (3, 5)


def test_a_value_that_dominates_its_block_takes_its_neighbours_relative_noise():
    """Softmax probabilities 1e-16 .. 1e-20 side by side: the likely one's own draws left it
    where it was; it is held to the block's median noise relative to magnitude."""
    magnitude = np.array([1e-16, *np.geomspace(1e-20, 1e-18, BLOCK - 1)])
    noise = magnitude * 1e-6
    noise[0] = 0.0
    noise[1] = magnitude[1] * 1.0  # (one value near a cancellation: the median ignores it)
    ratio = relative_median(noise, magnitude)
    assert ratio[0] == pytest.approx(1e-6) and np.all(ratio == ratio[0])
    reference, candidate = magnitude.astype(np.float32), magnitude.astype(np.float32)
    candidate[0] *= np.float32(1 + 2e-6)  # (several of its ULP: as a correct fold may move it)
    limit, _ = calibrated_limits(reference, candidate, [], [reference + noise.astype(np.float32)])
    assert np.abs(candidate[0] - reference[0]) < limit[0] < 1e-16 * 1e-3  # (0.1 % fails)
    assert np.all(relative_median(noise, np.zeros_like(noise)) == 0)


def test_neighbours_that_cancel_do_not_lend_their_relative_noise_beyond_32_ulp():
    """17 leftovers of a subtraction (relative noise 0.1) beside 15 values of 3: a 14 % error
    in one of those must still fail (the relative term is capped at 32 ULP)."""
    reference = np.array([2e-6] * 17 + [3.0] * 15, dtype=np.float32)
    noise = np.where(reference < 1, 2e-7, 1e-6)
    candidate = reference.copy()
    candidate[-1] *= np.float32(1.14)
    limit, _ = calibrated_limits(reference, candidate, [], [reference + noise.astype(np.float32)])
    assert limit[-1] < 0.001 * 3.0 and abs(candidate[-1] - reference[-1]) > limit[-1]


def test_sparse_values_pool_their_noise_with_their_nonzero_neighbours():
    """After a ReLU: one value per block of 32, its own noise zero (its inputs' moves cancelled
    after rounding). It takes the largest noise among the 32 nonzero values around it in memory
    order; the zeros keep their block's; nothing gets less than `block_max` gives."""
    reference = np.zeros(4 * BLOCK)
    reference[[3, BLOCK + 7, 2 * BLOCK + 1, 3 * BLOCK + 30]] = [0.2, 0.1, 0.3, 0.4]
    noise = np.zeros_like(reference)
    noise[[3, BLOCK + 7, 3 * BLOCK + 30]] = [1e-7, 3e-7, 2e-7]
    result = pooled(noise, reference)
    assert result[2 * BLOCK + 1] == 3e-7 and result[3] == 3e-7
    assert result[2 * BLOCK + 2] == 0.0 and result[BLOCK] == 3e-7
    assert np.all(result >= block_max(noise))
    dense = np.arange(1.0, 2 * BLOCK + 1)
    assert np.array_equal(pooled(noise[: 2 * BLOCK], dense), block_max(noise[: 2 * BLOCK]))


def test_limit_is_noise_factor_times_block_noise_plus_floor():
    reference = np.zeros(BLOCK, dtype=np.float32)
    candidate = reference.copy()
    perturbed = reference.copy()
    perturbed[3] = 1e-3
    limit, noise = calibrated_limits(reference, candidate, [perturbed])
    assert noise == pytest.approx(1e-3)
    np.testing.assert_allclose(limit, NOISE_FACTOR * 1e-3)  # (zeros: no floor)


def test_largest_of_several_draws_counts():
    reference = np.zeros(4, dtype=np.float32)
    draws = [np.array([1e-4, 0, 0, 0], np.float32), np.array([0, 2e-4, 0, 0], np.float32)]
    _, noise = calibrated_limits(reference, reference, draws)
    assert noise == pytest.approx(2e-4)


def test_draws_are_measured_from_the_unmoved_run_of_their_own_session():
    """Weights fed as inputs may take another kernel path than constant ones: the draws' noise is
    their distance from that session's unmoved output, not from the candidate's."""
    reference = np.zeros(4, dtype=np.float32)
    base = np.array([1e-3, 0, 0, 0], np.float32)  # the fed session, unmoved: another path
    draw = base + np.array([0, 1e-5, 0, 0], np.float32)
    _, against_base = calibrated_limits(reference, reference, [draw], perturbed_base=base)
    _, against_candidate = calibrated_limits(reference, reference, [draw])
    assert against_base == pytest.approx(1e-5) and against_candidate == pytest.approx(1e-3)
    flips = np.array([0, 1, 0, 0], np.int64)
    same = np.zeros(4, np.int64)
    assert compare("cpu", "n", same, flips, perturbed=[flips], perturbed_base=same).passed
    assert not compare("cpu", "n", same, flips, perturbed=[flips]).passed


def test_calibrated_comparison_catches_small_values_next_to_big_ones():
    """An output concatenating x·1e4 and x·0.01: a 1 % error in the small half fails, because
    each block of elements gets its own limit (not one from the max of the whole output)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(256)
    reference = np.concatenate([x * 1e4, x * 0.01]).astype(np.float32)
    noise = np.concatenate([x * 1e4, x * 0.01]) * 2e-7  # rounding-level moves, per element

    def moved(candidate):  # the candidate's own run with its weights moved by rounding
        return [(candidate + noise).astype(np.float32)]

    wrong = reference.copy()
    wrong[256:] *= 1.01
    assert compare("cpu", "y", reference, reference, perturbed=moved(reference)).passed
    result = compare("cpu", "y", reference, wrong, perturbed=moved(wrong))
    assert not result.passed and result.mismatches > 200 and result.worst_index[0] >= 256
    old_style = Tolerance(rtol=1e-4, atol=None, atol_scale=1e-5)
    assert compare("cpu", "y", reference, wrong, tolerance=old_style).passed  # what it missed


def test_limit_used_reports_the_margin():
    reference = np.ones(BLOCK, np.float32)
    perturbed = reference + np.float32(1e-6)
    candidate = reference + np.float32(4e-6)
    result = compare("cpu", "y", reference, candidate, perturbed=[perturbed])
    assert result.passed and result.criterion == "calibrated"
    assert 0.1 < result.limit_used < 0.5
    assert "of the limit" in result.line() and "rounding noise" in result.line()


def test_values_rounded_on_an_absolute_grid_may_move_by_a_step():
    """sigmoid(−10) comes out of onnxruntime as a multiple of 2^-25: the fold may move it by a
    few 2^-23 although that is 0.3 % of the value."""
    reference = (np.arange(1400, 1400 + BLOCK) * 2.0**-25).astype(np.float32)
    stepped = reference + np.float32(2.0**-22)
    assert compare("cpu", "score", reference, stepped, perturbed=[reference]).passed


def test_small_values_off_by_a_percent_fail_though_below_an_ulp_of_one():
    rng = np.random.default_rng(4)
    reference = (rng.standard_normal(256) * 1e-6).astype(np.float32)
    wrong = (reference * np.float32(1.01)).astype(np.float32)
    moved = (wrong * np.float32(1 + 2e-7)).astype(np.float32)  # its own rounding-level moves
    assert not compare("cpu", "y", reference, wrong, perturbed=[moved]).passed
    integers = np.arange(64, dtype=np.float32)  # a float output holding whole numbers
    off_by_one = integers.copy()
    off_by_one[7] += 1
    assert not compare("cpu", "n", integers, off_by_one, perturbed=[off_by_one]).passed


def test_blocks_on_an_absolute_grid_are_told_from_ordinary_values():
    scores = (np.arange(1400, 1432) * 2.0**-25).astype(np.float32)  # sigmoid's far tail
    assert on_absolute_grid(scores).all()
    ordinary = np.random.default_rng(0).standard_normal(64).astype(np.float32)
    assert not on_absolute_grid(ordinary).any()
    assert trailing_zero_bits(np.array([0.5, 3.0, 0.0], np.float32))[:2].tolist() == [23, 22]
    assert np.isnan(trailing_zero_bits(np.array([0.0], np.float32))[0])


def test_nothing_changed_allows_only_rounding_of_the_output():
    reference = np.full(8, 100.0, np.float32)
    one_ulp = np.nextafter(reference, np.float32(200))
    assert compare("cpu", "y", reference, one_ulp).passed
    assert not compare("cpu", "y", reference, reference * np.float32(1.001)).passed


def test_nan_in_candidate_fails_even_with_huge_tolerance():
    result = compare(
        "cpu", "y", np.ones(4), np.array([1, 1, np.nan, 1.0]), tolerance=Tolerance(1e9, 1e9)
    )
    assert not result.passed and result.nonfinite == 1


def test_same_infinities_agree():
    values = np.array([np.inf, -np.inf, np.nan, 1.0])
    assert compare("cpu", "y", values, values.copy()).passed


def test_allclose_semantics_both_bounds_must_be_exceeded():
    ref = np.array([100.0, 0.0])
    within = compare("cpu", "y", ref, np.array([100.5, 0.0]), tolerance=Tolerance(1e-2, 0.0))
    assert within.passed and within.criterion == "tolerance"
    beyond = compare("cpu", "y", ref, np.array([102.0, 0.0]), tolerance=Tolerance(1e-2, 1.0))
    assert not beyond.passed and beyond.limit_used == pytest.approx(2.0)
    assert "2 × the limit" in beyond.line() and "atol 1, rtol 0.01" in beyond.line()


def test_integers_must_match_exactly_and_name_the_first_difference():
    ref = np.array([[1, 2], [3, 4]], np.int64)
    got = np.array([[1, 2], [3, 5]], np.int64)
    result = compare("cpu", "idx", ref, got)
    assert not result.passed and result.worst_index == [1, 1] and result.criterion == "exact"


def test_shape_mismatch_fails_with_a_note():
    result = compare("cpu", "y", np.ones(3), np.ones(4))
    assert not result.passed and "shape/dtype" in result.line()


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_one_ulp_moved_moves_each_value_by_one_unit_in_the_last_place(dtype):
    rng = np.random.default_rng(1)
    values = (rng.standard_normal(1000) * 10).astype(dtype)
    values[:3] = [0, np.finfo(dtype).max, -np.finfo(dtype).max]
    moved, moves = one_ulp_moved(values, rng)
    assert moved[0] == 0 and np.all(np.isfinite(moved))
    assert 100 < moves.where.size < 400  # about a quarter
    back = moved.copy()
    moves.undo(back.view(np.dtype(f"u{back.dtype.itemsize}")))
    np.testing.assert_array_equal(back, values)
    distance = np.abs(moved[3:].astype(np.float64) - values[3:])
    np.testing.assert_array_less(0, distance[distance > 0] + 0)  # some moved
    spacing = np.spacing(np.abs(values[3:])).astype(np.float64)
    assert np.all(distance <= spacing * 1.0000001)
    assert np.count_nonzero(distance) > 0


def test_per_output_tolerances_read_every_way_validate_accepts_them():
    from bnfold.validation.criterion import PerOutput

    assert PerOutput.of(None).value_for("y") is None
    assert PerOutput.of(1e-3).value_for("y") == 1e-3
    assert (
        PerOutput.of({"y": 2}).value_for("y") == 2.0
        and PerOutput.of({"y": 2}).value_for("z") is None
    )
    both = PerOutput({"y": 0.0}, 5.0)
    assert PerOutput.of(both) is both and both.value_for("y") == 0.0 and both.value_for("z") == 5.0
    assert sorted(both.values()) == [0.0, 5.0]
