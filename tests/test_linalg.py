"""Bounded-jitter Cholesky: plain factor, jitter schedule, float64 fallback and errors."""

from __future__ import annotations

import logging

import pytest
import torch

from bayesagg import linalg
from bayesagg.linalg import NumericalError, augment, check_finite, cholesky


@pytest.fixture(autouse=True)
def _fresh_counters() -> None:
    linalg.reset_events()


def _spd(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, n, generator=g, dtype=torch.float64)
    return x @ x.T + n * torch.eye(n, dtype=torch.float64)


def test_positive_definite_needs_no_repair(caplog: pytest.LogCaptureFixture) -> None:
    a = torch.stack([_spd(5, 0), _spd(5, 1)])
    with caplog.at_level(logging.WARNING, logger="bayesagg"):
        factor = cholesky(a, what="test matrix")
    torch.testing.assert_close(factor, torch.linalg.cholesky(a), rtol=0, atol=0)
    assert linalg.jitter_events() == 0 and linalg.float64_fallbacks() == 0
    assert caplog.records == []


def test_singular_psd_gets_bounded_jitter_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    v = torch.tensor([1.0, 2.0, -1.0, 0.5], dtype=torch.float64)
    singular = torch.outer(v, v)  # rank 1: the plain factorisation fails
    assert torch.linalg.cholesky_ex(singular).info.item() != 0
    with caplog.at_level(logging.WARNING, logger="bayesagg"):
        factor = cholesky(singular, what="rank-one precision")
    messages = [r.getMessage() for r in caplog.records]
    assert linalg.jitter_events() == len(messages) >= 1
    assert all("rank-one precision" in m for m in messages)
    assert "1e-10" in messages[0]  # the schedule starts small and escalates
    # L L^T = A + jitter I with jitter <= 1e-2 x mean diagonal: the repair is bounded.
    jitter = (factor @ factor.T - singular).diagonal()
    assert torch.allclose(jitter, jitter[0].expand(4), atol=1e-12)
    assert 0 < jitter[0] <= 1e-2 * singular.diagonal().mean()
    torch.testing.assert_close(factor @ factor.T - jitter[0] * torch.eye(4).double(), singular)


def test_only_failing_matrices_of_a_batch_are_repaired() -> None:
    good = _spd(3)
    zero = torch.zeros(3, 3, dtype=torch.float64)  # no scale at all: absolute jitter still works
    factor = cholesky(torch.stack([good, zero]), what="batch")
    torch.testing.assert_close(factor[0], torch.linalg.cholesky(good), rtol=0, atol=0)
    assert torch.isfinite(factor[1]).all() and linalg.jitter_events() >= 1


def test_float64_fallback(caplog: pytest.LogCaptureFixture) -> None:
    # Positive-definite in exact arithmetic (eigenvalues ~1 and ~1e-8), but float32 rounding in
    # the factorisation produces a non-positive pivot.
    a = torch.tensor(
        [[0.24792158603668213, 0.4318060576915741], [0.4318060576915741, 0.7520784139633179]],
        dtype=torch.float32,
    )
    if torch.linalg.cholesky_ex(a).info.item() == 0:
        pytest.skip("this LAPACK factorises the example in float32")
    assert torch.linalg.cholesky_ex(a.double()).info.item() == 0
    with caplog.at_level(logging.WARNING, logger="bayesagg"):
        factor = cholesky(a, what="ill-conditioned", max_tries=1)  # no jitter allowed
    assert factor.dtype == torch.float32
    assert linalg.float64_fallbacks() == 1 and linalg.jitter_events() == 0
    assert any("float64" in r.getMessage() for r in caplog.records)
    torch.testing.assert_close(factor.double(), torch.linalg.cholesky(a.double()))


def test_indefinite_raises_naming_the_matrix() -> None:
    a = torch.diag(torch.tensor([1.0, -1.0, 2.0], dtype=torch.float32))
    with pytest.raises(NumericalError, match="indefinite thing"):
        cholesky(a, what="indefinite thing")
    assert issubclass(NumericalError, FloatingPointError)
    assert linalg.float64_fallbacks() == 1  # tried float64 before giving up


def test_non_finite_raises_immediately(caplog: pytest.LogCaptureFixture) -> None:
    a = _spd(3)
    a[1, 2] = float("nan")
    with (
        caplog.at_level(logging.WARNING, logger="bayesagg"),
        pytest.raises(NumericalError, match="nan matrix"),
    ):
        cholesky(a, what="nan matrix")
    assert caplog.records == [] and linalg.jitter_events() == 0


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="square"):
        cholesky(torch.ones(2, 3), what="rectangle")
    with pytest.raises(ValueError, match="max_tries"):
        cholesky(torch.eye(2), what="x", max_tries=0)


def test_check_finite_and_augment() -> None:
    check_finite(a=torch.ones(2), b=torch.zeros(3))
    with pytest.raises(FloatingPointError, match="second"):
        check_finite(first=torch.ones(2), second=torch.tensor([1.0, float("inf")]))
    h = torch.arange(6.0).reshape(2, 3)
    assert augment(h, False) is h
    torch.testing.assert_close(augment(h, True)[:, -1], torch.ones(2))


def test_check_finite_sum_fast_path_has_no_false_alarms() -> None:
    """Finite values whose sum overflows pass (exact fallback); NaN and -inf are still caught."""
    big = torch.full((4,), 3e38)  # float32 sum overflows to inf, every entry is finite
    check_finite(big=big, ids=torch.arange(3), flags=torch.ones(2, dtype=torch.bool))
    with pytest.raises(FloatingPointError, match="nan_one"):
        check_finite(ok=big, nan_one=torch.tensor([0.0, float("nan")]))
    with pytest.raises(FloatingPointError, match="cancel"):
        check_finite(cancel=torch.tensor([float("inf"), float("-inf")]))
    cholesky(torch.diag(torch.tensor([3e38, 3e38])), what="finite but large")
    with pytest.raises(NumericalError, match="NaN"):
        cholesky(torch.tensor([[1.0, float("nan")], [float("nan"), 1.0]]), what="nan matrix")
