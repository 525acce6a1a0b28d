"""Sub-grid refinement of dictionary matches: the quadratic peak and its use by the dictionary."""

import pytest
import torch

from crbnet import models
from crbnet.errors import InputError
from crbnet.estimators import DictionaryEstimator
from crbnet.estimators.protocol import least_squares_m0
from crbnet.estimators.subgrid import neighbour_offsets, quadratic_peak, window_centres
from crbnet.stats.sampling import ParameterSampler


def _quadratic_scores(offsets: torch.Tensor, peak: torch.Tensor, hessian: torch.Tensor
                      ) -> torch.Tensor:
    """Scores 1 + ½ (u − peak)ᵀ H (u − peak) at the window's offsets, one row per peak."""
    d = offsets[None].to(torch.float64) - peak[:, None, :]
    return 1 + 0.5 * torch.einsum("nmi,ij,nmj->nm", d, hessian, d)


def test_quadratic_peak_is_exact_for_a_quadratic_with_correlation():
    offsets = neighbour_offsets([5, 7])
    assert offsets.shape == (9, 2)
    hessian = torch.tensor([[-2.0, 1.2], [1.2, -1.5]], dtype=torch.float64)   # correlated
    peaks = torch.tensor([[0.3, -0.4], [-0.8, 0.6], [0.0, 0.0]], dtype=torch.float64)
    start = torch.zeros(3, 2, dtype=torch.int64)
    found = quadratic_peak(offsets, _quadratic_scores(offsets, peaks, hessian), start)
    assert torch.allclose(found, peaks, atol=1e-12)


def test_quadratic_peak_stays_in_the_cell_and_falls_back_without_a_maximum():
    offsets = neighbour_offsets([5, 5])
    hessian = -torch.eye(2, dtype=torch.float64)
    far = torch.tensor([[3.0, 1.5]], dtype=torch.float64)
    start = torch.tensor([[1, 0]], dtype=torch.int64)
    found = quadratic_peak(offsets, _quadratic_scores(offsets, far, hessian), start)
    # On the segment from the start (1, 0) towards (3, 1.5), where it leaves [-1, 1]²: the
    # start is on the edge already, so it stays there.
    assert torch.allclose(found, torch.tensor([[1.0, 0.0]], dtype=torch.float64))
    found = quadratic_peak(offsets, _quadratic_scores(offsets, far, hessian),
                           torch.zeros(1, 2, dtype=torch.int64))
    assert torch.allclose(found, torch.tensor([[1.0, 0.5]], dtype=torch.float64))
    saddle = torch.tensor([[-1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    found = quadratic_peak(offsets, _quadratic_scores(offsets, torch.zeros(1, 2), saddle), start)
    assert torch.equal(found, start.to(torch.float64))


def test_short_axes_are_not_refined_and_windows_stay_on_the_grid():
    offsets = neighbour_offsets([6, 2, 1])
    assert offsets.shape == (3, 3) and bool((offsets[:, 1:] == 0).all())
    best = torch.tensor([[0, 1, 0], [5, 0, 0], [3, 1, 0]])
    assert window_centres(best, [6, 2, 1]).tolist() == [[1, 1, 0], [4, 0, 0], [3, 1, 0]]
    scores = _quadratic_scores(offsets, torch.tensor([[0.25, 0.0, 0.0]], dtype=torch.float64),
                               -torch.eye(3, dtype=torch.float64))
    found = quadratic_peak(offsets, scores, torch.zeros(1, 3, dtype=torch.int64))
    assert torch.allclose(found, torch.tensor([[0.25, 0.0, 0.0]], dtype=torch.float64))


@pytest.fixture(scope="module")
def fisp():
    return models.get("fisp_mrf")


def test_refined_dictionary_is_closer_to_off_grid_truths(fisp):
    g = torch.Generator().manual_seed(6)
    truth = ParameterSampler(fisp).sample(200, g)
    y = (0.7 - 0.4j) * fisp.simulate(truth)
    error = {}
    for refine in (False, True):
        d = DictionaryEstimator(fisp, n_points=25, refine=refine)
        theta = d.predict(y)
        error[refine] = (theta / truth - 1).abs().median(0).values
        lo = torch.tensor([d.axes[p][0] for p in fisp.parameters], dtype=torch.float64)
        hi = torch.tensor([d.axes[p][-1] for p in fisp.parameters], dtype=torch.float64)
        assert bool(((theta >= lo) & (theta <= hi)).all())
    # Noiseless signals between the nodes of a 25 × 25 grid: the grid's quantization error
    # (median 4 % in T1, 6 % in T2) shrinks several times.
    assert bool((error[True] < error[False] / 3).all())


def test_refined_fit_is_the_least_squares_fit_at_the_refined_estimate(fisp):
    d = DictionaryEstimator(fisp, n_points=15)
    assert d.refine
    g = torch.Generator().manual_seed(7)
    truth = ParameterSampler(fisp).sample(20, g)
    y = (1.3 + 0.2j) * fisp.simulate(truth)
    fit = d.predict_with_fit(y)
    assert torch.equal(fit.theta, d.predict(y))
    f = fisp.simulate(fit.theta).to(torch.complex128)
    m0 = least_squares_m0(f, y.to(torch.complex128))
    assert torch.allclose(fit.m0, m0, rtol=1e-10)
    assert torch.allclose(fit.rss, (y - m0[:, None] * f).abs().square().sum(-1), rtol=1e-8)
    theta, m0_again = d.predict_with_m0(y)
    assert torch.equal(theta, fit.theta) and torch.allclose(m0_again, fit.m0)


def test_refine_needs_a_grid(fisp):
    atoms = ParameterSampler(fisp).sample(10, torch.Generator().manual_seed(8))
    assert not DictionaryEstimator(fisp, atoms=atoms).refine
    with pytest.raises(InputError, match="grid"):
        DictionaryEstimator(fisp, atoms=atoms, refine=True)


def test_window_follows_a_correlation_ridge(fisp):
    """CSF (T1 = 4 s, T2 = 2 s) on the default 100 × 100 grid: the best node's T2 (2.24 s) is
    two cells from the truth along the T1–T2 ridge, beyond one window."""
    truth = torch.tensor([[4.0, 2.0]], dtype=torch.float64)
    y = fisp.simulate(truth)
    plain = DictionaryEstimator(fisp, refine=False, progress=False).build()
    refined = DictionaryEstimator(fisp, progress=False).build()
    assert float((plain.predict(y) / truth - 1).abs()[0, 1]) > 0.1
    assert bool(((refined.predict(y) / truth - 1).abs() < 0.02).all())


def test_refinement_is_default_only_on_fine_grids(fisp):
    assert DictionaryEstimator(fisp, n_points=10).refine
    assert not DictionaryEstimator(fisp, n_points={"T1": 30, "T2": 9}).refine
    assert DictionaryEstimator(fisp, n_points=5, refine=True).refine
