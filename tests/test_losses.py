"""Losses against values computed by hand."""

import math

import pytest
import torch

from crbnet.learning import losses


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_mse_by_hand():
    est, truth = t([[1, 2], [3, 4]]), t([[0, 0], [0, 0]])
    # (1 + 4 + 9 + 16) / 4
    assert losses.mse(est, truth).item() == pytest.approx(7.5)
    # weights (1, 0.5): (1 + 2 + 9 + 8) / 4
    assert losses.mse(est, truth, [1.0, 0.5]).item() == pytest.approx(5.0)


def test_crb_loss_by_hand():
    est, truth = t([[1, 2], [3, 4]]), t([[0, 0], [0, 0]])
    crb = t([[1, 2], [3, 8]])
    # (1/1 + 4/2 + 9/3 + 16/8) / 4 = (1 + 2 + 3 + 2) / 4
    assert losses.crb(est, truth, crb).item() == pytest.approx(2.0)
    # an unidentifiable entry (inf CRB) is left out of the mean: (1 + 3 + 2) / 3
    crb_inf = t([[1, math.inf], [3, 8]])
    assert losses.crb(est, truth, crb_inf).item() == pytest.approx(2.0)
    per_param = losses.crb_ratio_per_parameter(est, truth, crb)
    # parameter 0: (1/1 + 9/3) / 2 = 2; parameter 1: (4/2 + 16/8) / 2 = 2
    assert per_param.tolist() == pytest.approx([2.0, 2.0])
    per_param_inf = losses.crb_ratio_per_parameter(est, truth, crb_inf)
    assert per_param_inf.tolist() == pytest.approx([2.0, 2.0])  # param 1: only 16/8


def test_crb_normalized_leaves_out_unusable_bounds():
    """values/CRB, NaN where the CRB is infinite, zero or negative; no NaN gradient leaks into
    the entries with a usable bound (the CRB loss differentiates through it)."""
    values = t([[2.0, 3.0, 4.0, 5.0]]).requires_grad_()
    crb = t([[4.0, math.inf, 0.0, -1.0]])
    ratio = losses.crb_normalized(values, crb)
    assert ratio[0, 0].item() == 0.5 and torch.isnan(ratio[0, 1:]).all()
    assert losses.finite_crb(crb).tolist() == [[True, False, False, False]]
    losses.crb(values, torch.zeros_like(values), crb).backward()
    assert values.grad.tolist() == [[2 * 2.0 / 4.0, 0.0, 0.0, 0.0]]


def test_crb_loss_gradient_by_hand():
    est = t([[1.0, -2.0]]).requires_grad_()
    truth, crb = t([[0.0, 0.0]]), t([[0.5, 4.0]])
    losses.crb(est, truth, crb).backward()
    # d/dθ̂ mean((θ̂-θ)²/CRB) = 2(θ̂-θ) / (CRB · N·P), N·P = 2
    assert est.grad[0].tolist() == pytest.approx([2 * 1 / (0.5 * 2), 2 * -2 / (4.0 * 2)])


def test_bias_reduced_by_hand():
    # sample 1: K = 3 estimates 1, 2, 3 of θ = 1 with CRB 0.5:
    #   mean 2 -> bias² / CRB = 1 / 0.5 = 2; unbiased variance 1 -> v/CRB - 1 = 1
    # sample 2: estimates 1, 1.5, 2 of θ = 1.5 with CRB 1:
    #   no bias; variance 0.25 < CRB -> no excess penalty
    est = t([[[1.0], [2.0], [3.0]], [[1.0], [1.5], [2.0]]])
    truth, crb = t([[1.0], [1.5]]), t([[0.5], [1.0]])
    lam = 0.5
    expected = ((2 + lam * 1) + 0.0) / 2
    assert losses.bias_reduced(est, truth, crb, lam=lam).item() == pytest.approx(expected)
    assert losses.bias_reduced(est, truth, crb, lam=0.0).item() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        losses.bias_reduced(est[:, :1], truth, crb)


def test_efficient_estimator_scores_one():
    """θ̂ = θ + N(0, CRB) is efficient and unbiased: the CRB loss is 1 within sampling error."""
    g = torch.Generator().manual_seed(0)
    n = 200_000
    theta = torch.rand(n, 2, generator=g, dtype=torch.float64)
    crb = 1e-4 + torch.rand(n, 2, generator=g, dtype=torch.float64) * 1e-2
    est = theta + crb.sqrt() * torch.randn(n, 2, generator=g, dtype=torch.float64)
    assert losses.crb(est, theta, crb).item() == pytest.approx(1.0, abs=0.01)
    # the bias term of the bias-reduced loss is then ≈ 1/K, the excess term ≈ small
    K = 8
    est_k = theta[:5000, None] + crb[:5000, None].sqrt() * torch.randn(
        5000, K, 2, generator=g, dtype=torch.float64)
    bias_only = losses.bias_reduced(est_k, theta[:5000], crb[:5000], lam=0.0).item()
    assert bias_only == pytest.approx(1 / K, rel=0.05)


def test_mse_weights_default_is_inverse_squared_scale():
    w = losses.mse_weights(["a", "b"], {"a": 2.0, "b": 0.1}, {"b": 7.0})
    assert w == pytest.approx([0.25, 7.0])


def test_relative_mse_by_hand():
    est, truth = t([[2, 3], [1, 8]]), t([[1, 2], [2, 4]])
    # ((1/1)² + (1/2)² + (1/2)² + (4/4)²) / 4 = (1 + 0.25 + 0.25 + 1) / 4
    assert losses.relative_mse(est, truth).item() == pytest.approx(0.625)
    # a zero truth is left out of the mean: (1 + 0.25 + 1) / 3
    assert losses.relative_mse(est, t([[1, 2], [0, 4]])).item() == pytest.approx(0.75)


def test_log_mse_by_hand():
    est, truth = t([[math.e, 1], [1, 2]]), t([[1, math.e ** 2], [1, 2]])
    # (1² + (−2)² + 0 + 0) / 4
    assert losses.log_mse(est, truth).item() == pytest.approx(1.25)
    # a non-positive estimate is clamped, not NaN: the loss stays finite with a gradient
    est = t([[-0.5, 1.0]]).requires_grad_()
    value = losses.log_mse(est, t([[1.0, 1.0]]))
    value.backward()
    assert math.isfinite(value.item()) and torch.isfinite(est.grad).all()


def test_registry_adapters_match_the_functions():
    gen = torch.Generator().manual_seed(0)
    K, n, P = 4, 3, 2
    truth = 1 + torch.rand(n, P, generator=gen, dtype=torch.float64)
    target = truth.repeat_interleave(K, 0)
    est = target + 0.1 * torch.randn(n * K, P, generator=gen, dtype=torch.float64)
    crb = 0.01 * torch.ones_like(target)
    inputs = losses.LossInputs(est, target, crb, [1.0, 2.0], K=K, lam=0.3)
    direct = {"mse": losses.mse(est, target, [1.0, 2.0]), "crb": losses.crb(est, target, crb),
              "bias_reduced": losses.bias_reduced(est.reshape(n, K, P), truth, crb[::K], 0.3),
              "relative_mse": losses.relative_mse(est, target),
              "log_mse": losses.log_mse(est, target)}
    assert set(losses.names()) == set(direct)
    for name, value in direct.items():
        torch.testing.assert_close(losses.get(name).compute(inputs), value)
    assert [n for n in losses.names() if losses.get(n).repeated] == ["bias_reduced"]
    with pytest.raises(ValueError, match="unknown loss"):
        losses.get("nope")
