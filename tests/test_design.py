"""Sequence design: exact gradients, limits that hold by construction, the CLI round trip."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from crbnet import models, progress, sequences
from crbnet.assessment.points import load_points
from crbnet.design import DesignSpace, SequenceDesigner
from crbnet.design.controls import FISPControls, MTControls, hann_matrix
from crbnet.design.cost import complex_step_jacobian, forward_mode_jacobian
from crbnet.physics import hardware
from crbnet.physics.hardware import GAMMA, HardwareLimits


def _short_mt_sequence(n: int = 60) -> sequences.MTSequence:
    """A short MT train (fast tests) with pulses of every kind."""
    t = np.arange(n) / n
    return sequences.MTSequence(TR=4.5e-3, theta=0.2 + 0.5 * np.sin(np.pi * t) ** 2,
                                TRF=(0.3 + 0.5 * t) * 1e-3)


def _short_fisp_sequence(n: int = 40) -> sequences.FISPSequence:
    flip = np.deg2rad(10 + 50 * np.sin(np.pi * np.arange(n) / n))
    return sequences.FISPSequence(flip=flip, TR=np.full(n, 12e-3), TE=2e-3, TI=20e-3)


def _designer(model, n_control=6, **space):
    labels, points = load_points(model, ["WM,GM"])
    return SequenceDesigner(model, points, snr=50,
                            space=DesignSpace(HardwareLimits(), n_control=n_control, **space))


def _central_difference(f, x: np.ndarray, i: int, h: float) -> float:
    """Richardson-extrapolated central difference (error O(h⁴))."""
    def d(step):
        e = np.zeros_like(x)
        e[i] = step
        return (f(x + e) - f(x - e)) / (2 * step)
    return (4 * d(h / 2) - d(h)) / 3


@pytest.mark.parametrize("kind", ["mt", "fisp"])
def test_cost_gradient_matches_finite_differences(kind):
    if kind == "mt":
        # T1s fixed: with all six parameters a 120-TR train leaves the Fisher matrix so badly
        # conditioned that round-off in the cost swamps the finite differences.
        model = models.get("mt_hybrid_state", sequence=_short_mt_sequence(120),
                           fixed={"B1": 1.0, "T1s": 1.0})
        designer = _designer(model)
    else:
        model = models.get("fisp_mrf", sequence=_short_fisp_sequence(), max_order=8)
        designer = _designer(model, optimize_tr=True, tr_range=(8e-3, 16e-3))
    rng = np.random.default_rng(3)
    x = rng.uniform(0.2, 0.8, designer.controls.n_variables)
    value, grad = designer.cost_and_gradient(x)
    assert math.isfinite(value) and value > 0

    def cost(z):
        with torch.no_grad():
            return float(designer.cost(torch.tensor(z, dtype=torch.float64)))

    assert cost(x) == pytest.approx(value, rel=1e-12)
    for i in rng.choice(x.size, 6, replace=False):
        fd = _central_difference(cost, x, i, 1e-4)
        assert grad[i] == pytest.approx(fd, rel=1e-5, abs=1e-7 * np.abs(grad).max()), i


def test_design_cost_equals_crb_of_the_played_sequence():
    """The differentiable route and crbnet.crb (the compiled kernel) give the same bounds."""
    model = models.get("mt_hybrid_state", sequence=_short_mt_sequence())
    designer = _designer(model)
    x = np.random.default_rng(0).uniform(0, 1, designer.controls.n_variables)
    seq = designer.controls.sequence(x)
    rel = designer.relative_std(seq)
    with torch.no_grad():
        cost = float(designer.cost(torch.tensor(x, dtype=torch.float64)))
    assert cost == pytest.approx(float((rel ** 2).sum(1).mean()), rel=1e-9)


def test_complex_step_jacobian_matches_forward_mode():
    model = models.get("fisp_mrf", sequence=_short_fisp_sequence(), max_order=8, fixed={})
    theta = torch.tensor([[0.9, 0.07, 0.95], [3.5, 1.5, 1.1]], dtype=torch.float64)
    from crbnet.physics.models.fisp_mrf import epg_echoes

    seq = model.sequence
    flip, tr = torch.tensor(seq.flip), torch.tensor(seq.TR)

    def echoes(th):
        p = model.full_parameters(th)
        return epg_echoes(p["T1"], p["T2"], p["B1"], flip, tr, seq.TE, seq.TI, 9)

    f_cs, j_cs = complex_step_jacobian(echoes, theta)
    f_fm, j_fm = forward_mode_jacobian(echoes, theta)
    torch.testing.assert_close(f_cs, f_fm, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(j_cs, j_fm, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("limits", [HardwareLimits(),
                                    HardwareLimits(peak_b1=8e-6, trf_min=200e-6, trf_max=2e-3,
                                                   rf_power_max=2e5)])
def test_every_point_of_the_box_is_within_the_limits(limits):
    start = sequences.default_mt_sequence()
    controls = MTControls(start, DesignSpace(limits, n_control=32))
    rng = np.random.default_rng(1)
    corners = [np.ones(controls.n_variables), np.zeros(controls.n_variables)]
    for x in corners + [rng.uniform(0, 1, controls.n_variables) for _ in range(20)]:
        seq = controls.sequence(x)
        assert hardware.violations(seq, limits, rtol=0) == []
        assert np.all(seq.theta >= 0) and np.all(seq.theta <= np.pi / 2)
    # All pulses as strong and short as allowed: peak B1 and (here) power sit on their limits.
    x = np.concatenate((np.zeros(32), np.ones(32)))
    summary = hardware.rf_summary(controls.sequence(x))
    assert summary["peak_b1"] == pytest.approx(limits.peak_b1, rel=1e-6) or \
        summary["rf_power"] == pytest.approx(limits.rf_power_max, rel=1e-6)


def test_fisp_controls_respect_max_flip_and_power():
    start = _short_fisp_sequence()
    limits = HardwareLimits(rf_power_max=1e4)
    controls = FISPControls(start, DesignSpace(limits, max_flip=np.deg2rad(40)))
    seq = controls.sequence(np.ones(controls.n_variables))
    assert np.max(seq.flip) <= np.deg2rad(40) * (1 + 1e-12)
    assert hardware.violations(seq, limits, rtol=0) == []
    assert hardware.rf_summary(seq)["rf_power"] == pytest.approx(1e4, rel=1e-6)
    # Designed TRs stay in their range and the schedule no longer than the start.
    controls = FISPControls(start, DesignSpace(limits, optimize_tr=True, tr_range=(8e-3, 20e-3)))
    for x in (np.ones(controls.n_variables), np.full(controls.n_variables, 0.3)):
        seq = controls.sequence(x)
        assert seq.TR.min() >= 8e-3 and seq.TR.max() <= 20e-3
        assert seq.TR.sum() <= start.TR.sum() * (1 + 1e-12)
    with pytest.raises(Exception, match="longer than"):
        FISPControls(start, DesignSpace(limits, optimize_tr=True, tr_range=(13e-3, 20e-3)))


def test_hann_matrix_reproduces_interpolation():
    cp = np.random.default_rng(0).uniform(size=7)
    H = hann_matrix(7, 50)
    np.testing.assert_allclose(H @ cp, sequences.hann_interpolate(cp, 50), rtol=1e-14)
    np.testing.assert_allclose(H.sum(1), 1, rtol=1e-14)
    assert H.min() >= 0


def test_rf_summary_by_hand():
    seq = sequences.MTSequence(TR=5e-3, theta=np.array([0.0, 0.3, 0.6]),
                               TRF=np.array([1e-3, 0.5e-3, 0.2e-3]))
    s = hardware.rf_summary(seq)
    omega = 2 * np.array([0.0, 0.3, 0.6]) / np.array([1e-3, 0.5e-3, 0.2e-3])
    assert s["peak_b1"] == pytest.approx(omega.max() / GAMMA)
    assert s["rf_power"] == pytest.approx(np.sum(omega ** 2 * [1e-3, 0.5e-3, 0.2e-3]) / 15e-3)
    assert s["trf_min"] == 0.2e-3                      # the θ = 0 TR plays no pulse
    assert hardware.violations(seq) == []               # 22.4 µT
    assert any("peak B1" in v for v in hardware.violations(seq, HardwareLimits(peak_b1=10e-6)))


def test_default_sequences_are_within_3t_limits():
    for name in models.names():
        assert hardware.violations(models.get(name).sequence) == [], name


def test_design_improves_the_cost():
    model = models.get("mt_hybrid_state", sequence=_short_mt_sequence())
    labels, points = load_points(model, ["WM"])
    bars = []

    def record_bars(*, total, desc, unit):
        bars.append((total, desc, unit))
        return progress.silent()

    designer = SequenceDesigner(model, points, snr=50,
                                space=DesignSpace(HardwareLimits(), n_control=6),
                                starts=2, max_minutes=1.0, max_iterations=15, seed=1,
                                progress=record_bars)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        result = designer.fit()
        assert torch.get_num_threads() == 2          # the design's one thread is not left set
    finally:
        torch.set_num_threads(threads)
    assert bars == [(60, "design", "s")]
    assert result.cost < 0.9 * result.start_cost
    assert hardware.violations(result.sequence) == []
    assert [r["start"] for r in result.runs] == ["start", "random"]
    assert all(h["best"] >= result.cost for h in result.history)


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "crbnet", *args], capture_output=True,
                          text=True, cwd=cwd)


def test_design_cli_round_trip(tmp_path):
    start = tmp_path / "start.json"
    start.write_text(json.dumps(_short_mt_sequence().to_dict()))
    out = tmp_path / "design"
    res = _cli("design", "--model", "mt_hybrid_state", "--start", str(start),
               "--control-points", "6", "--starts", "1", "--max-iterations", "5",
               "--tissue", "WM", "--snr", "30", "--out", str(out))
    assert res.returncode == 0, res.stderr
    report = json.loads((out / "design.json").read_text())
    assert (out / "design.png").stat().st_size > 0
    assert report["result"]["violations"] == []
    assert report["result"]["cost"] <= report["start_within_limits"]["cost"]
    # The written sequence loads everywhere; crb reproduces the report's bounds.
    res = _cli("crb", "--model", "mt_hybrid_state", "--sequence", str(out / "sequence.json"),
               "--snr", "30", "--json",
               *[f"--param={k}={v['value']}" for k, v in report["result"]["per_point"]["WM"].items()])
    assert res.returncode == 0, res.stderr
    std = json.loads(res.stdout)["std"]
    for p, v in report["result"]["per_point"]["WM"].items():
        assert std[p] == pytest.approx(v["sqrt_crb"], rel=1e-9)


@pytest.mark.parametrize("bad", [
    ["--trf-range", "1e-3:1e-4"],
    ["--trf-range", "1e-4:9e-3"],            # longer than the TR
    ["--tissue", "spleen"],
    ["--control-points", "1"],
    ["--peak-b1", "-1"],
    ["--weights", "T9=1"],
    ["--snr", "0"],
])
def test_design_cli_bad_input(tmp_path, bad, capsys):
    from crbnet.cli import app

    out = tmp_path / "never"
    rc = app.main(["design", "--model", "mt_hybrid_state", "--max-minutes", "0.1", *bad,
                   "--out", str(out)])
    stderr = capsys.readouterr().err
    assert rc == 2, stderr
    errors = [ln for ln in stderr.splitlines() if not ln.startswith("crbnet: warning")]
    assert "Traceback" not in stderr and len(errors) == 1, stderr
    assert not out.exists()


def test_points_from_tissue_names_and_csv(tmp_path):
    model = models.get("mt_hybrid_state", fixed={"B1": 1.0, "T1s": 1.0})
    labels, theta = load_points(model, ["WM,GM"])
    assert labels == ["WM", "GM"] and theta.shape == (2, 5)
    from crbnet.physics.tissues import tissue_table
    assert theta[0, model.parameters.index("m0s")] == tissue_table(model.name)["WM"]["m0s"][0]
    csv_file = tmp_path / "pts.csv"
    csv_file.write_text("label,m0s,T2f\nlesion-like,0.05,0.12\n")
    labels, theta = load_points(model, [str(csv_file)])
    assert labels == ["lesion-like"]
    assert theta[0, model.parameters.index("T2f")] == 0.12
    assert theta[0, model.parameters.index("Rx")] == model.spec("Rx").default
    csv_file.write_text("m0s,T9\n0.1,1\n")
    with pytest.raises(Exception, match="unknown column 'T9'"):
        load_points(model, [str(csv_file)])
    with pytest.raises(Exception, match="unknown tissue"):
        load_points(model, ["spleen"])
