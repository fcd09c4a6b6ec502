"""Square-matricization (the paper's Algorithm 2): properties and the paper's own examples."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from smmf_plan.shapes import factorize, square_matricize


def brute_force(n: int) -> tuple[int, int]:
    """Algorithm 2 literally: the first divisor scanning down from ⌊√N⌋."""
    for i in range(math.isqrt(n), 0, -1):
        if n % i == 0:
            return (n // i, i)
    return (0, 0)


@given(st.integers(min_value=1, max_value=200_000))
def test_matches_algorithm_2(n):
    assert square_matricize(n) == brute_force(n)


@settings(max_examples=300)
@given(st.lists(st.integers(min_value=1, max_value=5000), min_size=0, max_size=5))
def test_properties_on_shapes(shape):
    n_hat, m_hat = square_matricize(shape)
    n = math.prod(shape)
    assert n_hat * m_hat == n
    assert n_hat >= m_hat >= 1
    # n̂ + m̂ is minimal over all factor pairs (checked exhaustively where that is cheap)
    if n <= 10**7:
        best = min(n // d + d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
        assert n_hat + m_hat == best
    # the shape path and the element-count path agree
    assert square_matricize(n) == (n_hat, m_hat)


@given(st.integers(min_value=1, max_value=10**12))
def test_factorize_is_exact(n):
    fac = factorize(n)
    assert math.prod(p**e for p, e in fac) == n


def test_paper_and_reference_examples():
    # the paper's BERT example and the values measured on its reference code
    assert square_matricize((30522, 768)) == (5087, 4608)
    assert square_matricize((1000, 2048)) == (1600, 1280)
    assert square_matricize((64, 3, 7, 7)) == (98, 96)
    assert square_matricize((512, 512, 3, 3)) == (1536, 1536)
    assert square_matricize((2048, 512, 1, 1)) == (1024, 1024)
    assert square_matricize((50257, 768)) == (6932, 5568)
    assert square_matricize((1000,)) == (40, 25)


def test_edges():
    assert square_matricize(()) == (1, 1)
    assert square_matricize((0, 5)) == (0, 0)
    assert square_matricize(0) == (0, 0)
    assert square_matricize((7,)) == (7, 1)
    assert square_matricize(999_999_999_989) == (999_999_999_989, 1)  # a prime near 10¹²
    assert square_matricize(10**12) == (10**6, 10**6)
    # 70B-class tensors: factorized per dimension, exact
    assert square_matricize((28672, 8192)) == (16384, 14336)
