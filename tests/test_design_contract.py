"""Sequence design against the model contract (SignalModel.signal_for_sequence): models of
every kind — built in, written by a user, segmented — are designed with their own physics,
within the limits."""

import json
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from crbnet import models, sequences
from crbnet.design import DesignSpace, SequenceDesigner
from crbnet.design.controls import SegmentedControls, controls_for
from crbnet.design.cost import played_signal_and_jacobian
from crbnet.errors import InputError
from crbnet.physics import hardware
from crbnet.physics.hardware import HardwareLimits
from crbnet.physics.models.base import ParameterSpec, SignalModel


def _toy_segmented_signal(p, alpha, trf, TR, inversion):
    """A cheap two-parameter toy of kind 'segmented' (not crbnet physics): per segment a
    periodic cycle of the longitudinal magnetization z; pulse n rotates z by α_n (an inversion
    pulse flips it) and saturates it by exp(−α_n²·T2s/TRF_n), then z relaxes with T1 over TR;
    the sample before pulse n is z·sin α_n, times a fixed chirp (a complex signal)."""
    T1, T2s = p["T1"], p["T2s"]                                          # [V]
    E1 = torch.exp(-TR / T1)
    inv = torch.as_tensor(inversion)[..., None]                          # [S, N, 1]
    sat = torch.exp(-alpha[..., None] ** 2 * T2s / trf[..., None])       # [S, N, V]
    a = torch.where(inv, -torch.ones_like(sat), torch.cos(alpha)[..., None]) * sat * E1
    A, B = torch.ones_like(a[:, 0]), torch.zeros_like(a[:, 0])
    for n in range(a.shape[1]):
        A, B = a[:, n] * A, a[:, n] * B + (1 - E1)
    z, rows = B / (1 - A), []                                            # periodic start
    for n in range(a.shape[1]):
        rows.append(z)
        z = a[:, n] * z + (1 - E1)
    signal = torch.stack(rows, 1) * torch.sin(alpha)[..., None]          # [S, N, V]
    n_pulses = alpha.shape[1]
    chirp = torch.exp(1j * 0.3 * torch.arange(n_pulses, dtype=alpha.dtype) / n_pulses)
    return (signal * chirp[:, None]).permute(2, 0, 1).reshape(signal.shape[-1], -1)


def _segmented_start(n_segments: int, n_pulses: int = 16) -> sequences.SegmentedSequence:
    t = np.arange(n_pulses) / n_pulses
    alpha = np.stack([0.3 + (1.5 + 0.3 * s) * np.sin(np.pi * t) ** 2 for s in range(n_segments)])
    trf = np.stack([(0.3 + 0.4 * t + 0.1 * s) * 1e-3 for s in range(n_segments)])
    alpha[:, 0], trf[:, 0] = np.pi, 0.6e-3                               # the inversion pulses
    return sequences.SegmentedSequence(alpha=alpha, TRF=trf, TR=3.5e-3)


class ToySegmented(SignalModel):
    """Toy model of kind 'segmented' (see _toy_segmented_signal)."""

    name = "toy_segmented"
    sequence_kind = "segmented"
    specs = (ParameterSpec("T1", "s", (0.05, 5.0), (0.3, 3.0), 1.0, True, "toy T1"),
             ParameterSpec("T2s", "s", (1e-6, 1e-3), (5e-6, 2e-5), 12e-6, False, "toy T2s"))

    @classmethod
    def default_sequence(cls):
        return _segmented_start(2)

    def _simulate(self, p):
        seq = self.sequence
        alpha, trf = (torch.as_tensor(v, dtype=p["T1"].dtype) for v in (seq.alpha, seq.TRF))
        return _toy_segmented_signal(p, alpha, trf, seq.TR, seq.inversion)

    def signal_for_sequence(self, theta, played):
        return _toy_segmented_signal(self.full_parameters(theta), played["alpha"],
                                     played["TRF"], self.sequence.TR, self.sequence.inversion)


# Short T1s: a toy segment lasts 56 ms, and the toy's T1 is identifiable on that scale only.
POINTS = torch.tensor([[0.06, 10e-6], [0.12, 14e-6]], dtype=torch.float64)


def _segment_figures(seq: sequences.SegmentedSequence) -> list[dict]:
    """Peak ω1, shortest/longest pulse and mean RF power of each segment, by hand."""
    out = []
    for alpha, trf in zip(seq.alpha, seq.TRF):
        omega = np.abs(alpha) / trf
        out.append({"omega_max": omega.max(), "trf_min": trf.min(), "trf_max": trf.max(),
                    "power": np.sum(omega ** 2 * trf) / (seq.TR * alpha.size)})
    return out


def _assert_within(seq, limits):
    for fig in _segment_figures(seq):
        assert fig["omega_max"] <= limits.omega_max
        assert limits.trf_min <= fig["trf_min"] and fig["trf_max"] <= limits.trf_max
        assert fig["power"] <= limits.rf_power_max
    assert hardware.violations(seq, limits, rtol=0) == []


@pytest.mark.parametrize("n_segments", [1, 3])
@pytest.mark.parametrize("limits", [HardwareLimits(),
                                    HardwareLimits(peak_b1=23.5e-6, trf_min=200e-6,
                                                   trf_max=1e-3, rf_power_max=3e5)])
def test_segmented_controls_hold_the_limits_per_segment(n_segments, limits):
    start = _segmented_start(n_segments)
    controls = SegmentedControls(start, DesignSpace(limits, n_control=5))
    assert controls.n_variables == 2 * n_segments * 5
    rng = np.random.default_rng(2)
    corners = [np.ones(controls.n_variables), np.zeros(controls.n_variables)]
    for x in corners + [rng.uniform(0, 1, controls.n_variables) for _ in range(10)]:
        seq = controls.sequence(x)
        _assert_within(seq, limits)
        assert seq.TR == start.TR and np.array_equal(seq.inversion, start.inversion)
        # The inversion pulses are the start's; every other α is designed non-negative.
        np.testing.assert_array_equal(seq.alpha[start.inversion], start.alpha[start.inversion])
        np.testing.assert_array_equal(seq.TRF[start.inversion], start.TRF[start.inversion])
        assert np.all(seq.alpha[~start.inversion] >= 0)
    # Short strong pulses everywhere: each segment sits on its power limit (the low limit)
    # or on the peak-B1 limit (the default).
    half = controls.n_variables // 2
    seq = controls.sequence(np.concatenate((np.zeros(half), np.ones(half))))
    for fig in _segment_figures(seq):
        assert (fig["power"] == pytest.approx(limits.rf_power_max, rel=1e-6)
                or fig["omega_max"] == pytest.approx(limits.omega_max, rel=1e-6))


def _segmented_models() -> list:
    """The toy and every registered model that plays kind 'segmented' and implements the
    design contract (each is designed with SegmentedControls, so each is checked here)."""
    found = [name for name, cls in models.REGISTRY.items()
             if "segmented" in cls.accepted_sequence_kinds()
             and cls.signal_for_sequence is not SignalModel.signal_for_sequence]
    return ["toy"] + found


@pytest.mark.parametrize("name", _segmented_models())
def test_segmented_design_gradient_and_bounds_use_the_models_physics(name):
    """The differentiable cost equals crbnet.crb's on the written sequence (through the
    model's simulate); the gradient in the controls of the signal and its Jacobian — reverse
    mode through the model's forward-mode Jacobian, where autodiff rules can fail (torch
    2.13's second derivatives of torch.linalg.solve are wrong, forward over forward as well)
    — matches finite differences; and for the toy so does the cost's gradient (the registered
    models' costs on a 32-pulse sequence are too ill-conditioned for finite differences)."""
    start = _segmented_start(2)
    if name == "toy":
        model, points = ToySegmented(sequence=start), POINTS
    else:
        model = models.get(name, sequence=start)
        # Inside the training ranges, off their middles (ω0 = 0 is a symmetry point where the
        # signal's ω0-derivative vanishes and the Fisher matrix is singular).
        points = torch.tensor([[lo + f * (hi - lo) for lo, hi in model.train_ranges.values()]
                               for f in (0.35, 0.6)], dtype=torch.float64)
    designer = SequenceDesigner(model, points, snr=50,
                                space=DesignSpace(HardwareLimits(), n_control=4))
    assert isinstance(designer.controls, SegmentedControls)
    rng = np.random.default_rng(5)
    # Away from the kinks of the controls: pulses ≤ 0.46 ms (the α cap is the peak-B1 one,
    # below π) and α ≤ 0.6 of its cap (RF power below its limit, not scaled).
    half = designer.controls.n_variables // 2
    x = np.concatenate((rng.uniform(0.05, 0.4, half), rng.uniform(0.2, 0.6, half)))
    value, grad = designer.cost_and_gradient(x)
    rel = designer.relative_std(designer.controls.sequence(x))
    # (Round-off through the ill-conditioned Fisher inverses of the registered models on this
    # short sequence reaches ~1e-8.)
    assert value == pytest.approx(float((rel ** 2).sum(1).mean()),
                                  rel=1e-9 if name == "toy" else 1e-6)
    weights = {}

    def functional(z: torch.Tensor) -> torch.Tensor:
        """A fixed random linear functional of the signal and its Jacobian columns."""
        out = designer.controls.signal_and_jacobian(model, designer.controls.played(z), points)
        total = 0
        for k, t in enumerate(out):
            t = torch.view_as_real(t) if t.is_complex() else t
            if k not in weights:
                weights[k] = torch.tensor(rng.normal(size=t.shape)) / float(t.detach().abs().amax())
            total = total + (t * weights[k]).sum()
        return total

    xt = torch.tensor(x, requires_grad=True)
    (reverse,) = torch.autograd.grad(functional(xt), xt)

    def along(direction: torch.Tensor, h: float) -> float:
        with torch.no_grad():
            return float(functional(torch.tensor(x) + h * direction)
                         - functional(torch.tensor(x) - h * direction)) / (2 * h)

    for _ in range(2):
        direction = torch.tensor(rng.normal(size=x.size))
        fd = (4 * along(direction, 1e-3) - along(direction, 2e-3)) / 3      # Richardson
        assert float(reverse @ direction) == pytest.approx(fd, rel=1e-6)
    if name != "toy":
        return

    def cost(z):
        with torch.no_grad():
            return float(designer.cost(torch.tensor(z, dtype=torch.float64)))

    def central(i, h):
        e = np.zeros_like(x)
        e[i] = h
        return (cost(x + e) - cost(x - e)) / (2 * h)

    for i in rng.choice(x.size, 3, replace=False):
        fd = (4 * central(i, 1e-3) - central(i, 2e-3)) / 3           # Richardson: O(h⁴)
        assert grad[i] == pytest.approx(fd, rel=1e-6, abs=1e-9 * np.abs(grad).max()), i


@pytest.mark.parametrize("n_segments", [1, 2])
def test_segmented_design_improves_within_limits(n_segments):
    model = ToySegmented(sequence=_segmented_start(n_segments))
    limits = HardwareLimits(rf_power_max=1e6)
    designer = SequenceDesigner(model, POINTS, snr=50, space=DesignSpace(limits, n_control=4),
                                starts=1, max_minutes=0.5, max_iterations=3)
    result = designer.fit()
    assert result.cost < result.start_cost
    assert result.sequence.alpha.shape == (n_segments, 16)
    _assert_within(result.sequence, limits)
    cps = designer.controls.control_points(result.x)
    assert np.shape(cps["alpha"]) == (n_segments, 4)


def test_segmented_controls_refuse_what_they_cannot_keep():
    start = _segmented_start(2)
    space = DesignSpace(HardwareLimits(), n_control=4)
    with pytest.raises(InputError, match="peak-B1"):                    # π in 100 µs
        SegmentedControls(sequences.SegmentedSequence(
            alpha=start.alpha, TRF=np.where(start.inversion, 1e-4, start.TRF), TR=start.TR),
            space)
    with pytest.raises(InputError, match="RF power"):
        SegmentedControls(start, DesignSpace(HardwareLimits(rf_power_max=1e3), n_control=4))
    with pytest.raises(InputError, match="TR"):
        SegmentedControls(sequences.SegmentedSequence(alpha=start.alpha, TRF=start.TRF), space)
    with pytest.raises(InputError, match="control-points"):
        SegmentedControls(start, DesignSpace(HardwareLimits(), n_control=17))


def test_controls_follow_the_models_actual_sequence_kind():
    class FispOrSegmented(ToySegmented):
        name = "fisp_or_segmented"
        sequence_kind = "fisp"
        sequence_kinds = ("fisp", "segmented")

    model = FispOrSegmented(sequence=_segmented_start(1))
    assert controls_for(model, DesignSpace(HardwareLimits(), n_control=4)).kind == "segmented"


def test_a_model_without_signal_for_sequence_is_refused():
    class NoContract(SignalModel):
        name = "no_contract"
        sequence_kind = "fisp"
        specs = (ParameterSpec("T1", "s", (0.05, 5.0), (0.3, 3.0), 1.0),)

        @classmethod
        def default_sequence(cls):
            return sequences.default_fisp_sequence(20)

    with pytest.raises(InputError, match="signal_for_sequence") as info:
        controls_for(NoContract(), DesignSpace(HardwareLimits()))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["mt_hybrid_state", "fisp_mrf"])
def test_signal_for_sequence_plays_the_models_own_sequence(name):
    """On the model's own sequence, signal_for_sequence is simulate, and design's Jacobian
    (forward mode for MT, the complex step for FISP) is crbnet.crb's explicit one."""
    if name == "mt_hybrid_state":
        n = 60
        t = np.arange(n) / n
        seq = sequences.MTSequence(TR=4.5e-3, theta=0.2 + 0.5 * np.sin(np.pi * t) ** 2,
                                   TRF=(0.3 + 0.5 * t) * 1e-3)
        played = {"theta": seq.theta, "TRF": seq.TRF}
        theta = torch.tensor([[0.1, 0.8, 0.06, 20.0, 1.0, 10e-6, 0.95],
                              [0.2, 1.4, 0.09, 40.0, 0.7, 14e-6, 1.1]], dtype=torch.float64)
    else:
        seq = sequences.default_fisp_sequence(30)
        played = {"flip": seq.flip, "TR": seq.TR}
        theta = torch.tensor([[0.9, 0.07, 0.95], [2.5, 0.8, 1.1]], dtype=torch.float64)
    model = models.get(name, sequence=seq, fixed={})
    played = {k: torch.tensor(v) for k, v in played.items()}
    with torch.no_grad():
        torch.testing.assert_close(model.signal_for_sequence(theta, played),
                                   model.simulate(theta), rtol=1e-12, atol=1e-14)
    signal, columns = played_signal_and_jacobian(model, played, theta)
    ref_signal, ref_columns = model.explicit_signal_and_jacobian(theta)
    phase = complex(model.real_signal_phase).conjugate()
    torch.testing.assert_close(signal, (ref_signal * phase).real, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(columns, (ref_columns * phase).real, rtol=1e-9, atol=1e-12)


USER_MODEL = '''
"""A user's FISP-kind model: a spoiled gradient-echo train (no stimulated echoes) with a
transmit scale B1."""
import torch
from crbnet import sequences
from crbnet.models import ParameterSpec, SignalModel


def _signal(T1, B1, flip, TR, TI):
    z = 1 - 2 * torch.exp(-TI / T1)
    out = []
    for n in range(flip.shape[0]):
        out.append(z * torch.sin(B1 * flip[n]))
        E1 = torch.exp(-TR[n] / T1)
        z = z * torch.cos(B1 * flip[n]) * E1 + 1 - E1
    s = torch.stack(out, -1)
    return torch.complex(s, torch.zeros_like(s))


class SpoiledTrain(SignalModel):
    name = "spoiled_train"
    sequence_kind = "fisp"
    specs = (ParameterSpec("T1", "s", (0.05, 5.0), (0.3, 3.0), 1.0, True, "T1"),
             ParameterSpec("B1", "", (0.5, 1.5), (0.8, 1.2), 1.0, False, "transmit scale"))

    @classmethod
    def default_sequence(cls):
        return sequences.default_fisp_sequence(12)

    def _simulate(self, p):
        seq = self.sequence
        flip, TR = (torch.as_tensor(v, dtype=p["T1"].dtype) for v in (seq.flip, seq.TR))
        return _signal(p["T1"], p["B1"], flip, TR, seq.TI)

    def signal_for_sequence(self, theta, played):
        p = self.full_parameters(theta)
        return _signal(p["T1"], p["B1"], played["flip"], played["TR"], self.sequence.TI)
'''


def test_design_cli_designs_a_users_model_from_a_file(tmp_path):
    (tmp_path / "user_model.py").write_text(textwrap.dedent(USER_MODEL))
    (tmp_path / "points.csv").write_text("label,T1,B1\nWM,0.8,0.95\nGM,1.3,1.05\n")
    out = tmp_path / "design"
    res = subprocess.run([sys.executable, "-m", "crbnet", "design",
                          "--model", "user_model.py:SpoiledTrain", "--points", "points.csv",
                          "--starts", "1", "--max-iterations", "2", "--max-minutes", "0.1",
                          "--out", str(out)], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    report = json.loads((out / "design.json").read_text())
    assert report["model"] == "spoiled_train" and report["controls"]["kind"] == "fisp"
    assert report["result"]["violations"] == []
    assert report["result"]["cost"] <= report["start_within_limits"]["cost"]
    # The optimizer's first cost (the user's signal_for_sequence, differentiated) is the cost
    # crbnet.crb gives through the user's simulate: design ran the user's physics.
    assert report["history"][0]["cost"] == pytest.approx(report["start_within_limits"]["cost"],
                                                         rel=1e-9)
    assert (out / "design.png").stat().st_size > 0
    assert math.isfinite(report["result"]["cost"])
