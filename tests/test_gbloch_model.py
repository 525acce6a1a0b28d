"""mt_generalized_bloch: the tensor route against an independent brute-force simulation, its
conventions, options and parameter handling."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from crbnet.physics import models
from crbnet.physics import sequences as seqs
from crbnet.physics.models.base import ModelError

TR = 4e-3


def small_sequence() -> seqs.SegmentedSequence:
    """Two segments of 12 pulses: an inversion pulse first, zero pulses, negative angles and
    durations from 100 µs to 1 ms."""
    rng = np.random.default_rng(3)
    alpha = rng.uniform(-1.5, 2.5, (2, 12))
    alpha[:, 3] = 0.0
    alpha[:, 0] = math.pi
    trf = rng.uniform(1e-4, 1e-3, (2, 12))
    trf[:, 0] = 5e-4
    return seqs.SegmentedSequence(alpha=alpha, TRF=trf, TR=TR)


def generator(w, omega0, m0s, R1f, R2f, Rx, R1s, R2s) -> np.ndarray:
    """The 6 × 6 generator written out again, for the brute-force reference."""
    m0f = 1 - m0s
    return np.array([
        [-R2f, -omega0, w, 0, 0, 0],
        [omega0, -R2f, 0, 0, 0, 0],
        [-w, 0, -R1f - Rx * m0s, 0, Rx * m0f, R1f * m0f],
        [0, 0, 0, -R2s, w, 0],
        [0, 0, Rx * m0s, -w, -R1s - Rx * m0f, R1s * m0s],
        [0, 0, 0, 0, 0, 0]], dtype=float)


def brute_force(seq, p, R2s, n_cycles=400):
    """Every segment played ``n_cycles`` times from thermal equilibrium, step by step with
    scipy's matrix exponential: the last cycle's echoes (no periodic solve, no scan)."""
    out = []
    spoil = np.diag([1.0, 1, 1, 0, 1, 1])
    phase = np.eye(6)
    phase[:2, :2] = [[-1, 0], [0, -1]]                    # RF phase increment π
    args = (p["omega0"], p["m0s"], 1 / p["T1f"], 1 / p["T2f"], p["Rx"], 1 / p["T1s"])
    for alpha, trf, inv in zip(seq.alpha, seq.TRF, seq.inversion):
        maps = []
        for a, t, is_inv in zip(alpha, trf, inv):
            half = TR / 2 if is_inv else (TR - t) / 2
            F = spoil @ scipy.linalg.expm(generator(0, *args, 0) * half)
            w = p["B1"] * a / t
            if is_inv:
                beta = p["B1"] * a
                Es = scipy.linalg.expm(np.array([[-R2s, w], [-w, 0]]) * t)
                pulse = np.diag([math.sin(beta / 2) ** 2, -math.sin(beta / 2) ** 2,
                                 math.cos(beta), 0, 0, 1])
                pulse[3:5, 3:5] = Es
            else:
                pulse = scipy.linalg.expm(generator(w, *args, R2s) * t)
            maps.append(F @ pulse @ phase @ F)
        m = np.array([0, 0, 1 - p["m0s"], 0, p["m0s"], 1.0])
        for _ in range(n_cycles):
            echoes = []
            for P in maps:
                m = P @ m
                echoes.append(m[0] + 1j * m[1])
        out.append(np.array(echoes))
    return np.concatenate(out)


PARAMS = {"m0s": 0.2, "T1f": 0.9, "T2f": 0.06, "Rx": 25.0, "T1s": 0.4, "T2s": 11e-6,
          "B1": 0.9, "omega0": 120.0}


def test_periodic_state_matches_brute_force():
    model = models.get("mt_generalized_bloch", sequence=small_sequence(), lineshape="lorentzian")
    model.use_compiled_kernel = False
    theta = model.theta_from_dict(PARAMS)
    signal = model.simulate(theta)[0].numpy()
    reference = brute_force(model.sequence, PARAMS, 1 / PARAMS["T2s"])
    assert np.abs(signal - reference).max() <= 1e-10 * np.abs(reference).max()
    assert np.abs(reference.imag).max() > 1e-3            # ω0 ≠ 0 is exercised


def test_on_resonance_signal_is_real():
    seq = seqs.SegmentedSequence(alpha=np.r_[math.pi, np.full(40, 0.6)], TRF=np.full(41, 4e-4),
                                 TR=TR)
    model = models.get("mt_generalized_bloch", sequence=seq, lineshape="lorentzian",
                       fixed={"omega0": 0.0, "B1": 1.0})
    theta = model.theta_from_dict({k: v for k, v in PARAMS.items() if k in model.parameters})
    s = model.simulate(theta)[0]
    assert s.imag.abs().max() < 1e-15
    # With the RF phase advancing by π the alternating magnetization is seen in the pulses'
    # frame: the late echoes of a constant train share one sign.
    late = s.real[20:]
    assert torch.all(late * late[0] > 0)


def test_signal_for_sequence_equals_simulate_and_differentiates():
    model = models.get("mt_generalized_bloch", sequence=small_sequence(), lineshape="lorentzian")
    model.use_compiled_kernel = False
    theta = model.theta_from_dict(PARAMS)
    played = {k: torch.tensor(getattr(model.sequence, k), requires_grad=True)
              for k in ("alpha", "TRF")}
    s = model.signal_for_sequence(theta, played)
    assert torch.allclose(s, model.simulate(theta), rtol=0, atol=1e-14)
    s.abs().sum().backward()
    assert torch.isfinite(played["alpha"].grad).all() and played["alpha"].grad.abs().sum() > 0


def test_defaults_options_and_bounds():
    model = models.get("mt_generalized_bloch", lineshape="lorentzian")
    assert model.parameters == ("m0s", "T1f", "T2f", "Rx", "T1s", "T2s", "B1", "omega0")
    lo, hi = model.bounds["omega0"]
    assert hi == pytest.approx(math.pi / model.sequence.TR) and lo == -hi
    with pytest.raises(ModelError, match="lineshape"):
        models.get("mt_generalized_bloch", lineshape="voigt")
    with pytest.raises(ModelError, match="omega0"):
        model.theta_from_dict({"omega0": 2 * hi}, fill_defaults=True)
    fixed = models.get("mt_generalized_bloch", fixed={"B1": 1.0, "omega0": 0.0},
                       lineshape="lorentzian")
    assert fixed.n_parameters == 6


def test_tr_option_fills_a_missing_tr_and_refuses_a_different_one():
    seq = small_sequence()
    bare = seqs.SegmentedSequence(alpha=seq.alpha, TRF=seq.TRF)
    with pytest.raises(seqs.SequenceError, match="TR"):
        models.get("mt_generalized_bloch", sequence=bare, lineshape="lorentzian")
    model = models.get("mt_generalized_bloch", sequence=bare, lineshape="lorentzian", TR=TR)
    assert model.sequence.TR == TR
    with pytest.raises(seqs.SequenceError, match="TR"):
        models.get("mt_generalized_bloch", sequence=seq, lineshape="lorentzian", TR=5e-3)


def _graham_pulse(w, TRF, W, p):
    """The same pulse with the semi-solid transverse magnetization eliminated: zs saturates at
    Graham's rate W (xs kept at 0)."""
    from crbnet.physics.models import gbloch_steady_state as gss

    H = gss.hamiltonian(w, p["omega0"], p["m0s"], p["R1f"], p["R2f"], p["Rx"], p["R1s"],
                        torch.zeros_like(w))
    H[..., gss.XS, :] = 0
    H[..., :, gss.XS] = 0
    H[..., gss.ZS, gss.ZS] -= W
    return torch.linalg.matrix_exp(H * TRF)


def test_graham_rate_is_the_lorentzian_limit():
    """Lorentzian generalized Bloch (R2sl = 1/T2s) → Graham's saturation W = w²·T2s when
    w·T2s → 0 at fixed saturation W·TRF = 1: the difference falls as (w·T2s)² = T2s/TRF here
    (the transient of xs lasts ~T2s of the pulse's TRF)."""
    from crbnet.physics.models import gbloch_steady_state as gss

    p = {k: torch.tensor(v, dtype=torch.float64) for k, v in
         {"m0s": 0.2, "R1f": 1.0, "R2f": 15.0, "Rx": 30.0, "R1s": 3.0, "B1": 1.0,
          "omega0": 0.0}.items()}
    TRF = torch.tensor(5e-4, dtype=torch.float64)
    m = torch.tensor([0, 0, 0.8, 0, 0.2, 1.0], dtype=torch.float64)
    errors = []
    for T2s in (1e-6, 1e-7, 1e-8):
        w = torch.sqrt(torch.tensor(1.0, dtype=torch.float64) / (T2s * TRF))   # W·TRF = 1
        exact = gss.rf_pulse(w * TRF, TRF, torch.tensor(1 / T2s, dtype=torch.float64),
                             {**p, "B1": torch.tensor(1.0, dtype=torch.float64)}) @ m
        graham = _graham_pulse(w, TRF, w ** 2 * T2s, p) @ m
        errors.append(float(abs(exact[gss.ZS] - graham[gss.ZS])))
        assert abs(float(exact[gss.ZS]) - 0.2) > 0.05        # the pulse saturates visibly
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    assert np.all((ratios > 8) & (ratios < 12)), errors  # tenfold per decade of T2s
    assert errors[0] < 1e-5


# MRIgeneralizedBloch.jl 0.8.7, docstring of calculatesignal_linearapprox: 100 pulses of π/2 in
# 500 µs, TR 4 ms, ω0 0, B1 1, m0s 0.1, R1f 1/s, R2f 15/s, Rx 30/s, R1s 6.5/s, T2s 10 µs,
# super-Lorentzian; the first 10 and last 9 echoes it prints (all real).
PUBLISHED_HEAD = (-0.029305987774458163, 0.004329424678273618, -0.022761409373843695,
                  0.008280330224850314, -0.016751305727868086, 0.011921649143708494,
                  -0.01119057989041819, 0.015305608440952356, -0.0060267918180664974,
                  0.018463027499697613)
PUBLISHED_TAIL = (0.061531473509660414, 0.06081400768357244, 0.0617257515931871,
                  0.061064216222629225, 0.0619074570531536, 0.06129750535994419,
                  0.062077399758002534, 0.061515021919442275, 0.06223633770306246)


@pytest.mark.parametrize("compiled", [False, True])
def test_published_linear_approximation_example(compiled):
    seq = seqs.SegmentedSequence(alpha=np.full(100, math.pi / 2), TRF=np.full(100, 5e-4),
                                 TR=4e-3)
    model = models.get("mt_generalized_bloch", sequence=seq)
    model.use_compiled_kernel = compiled
    theta = model.theta_from_dict({"m0s": 0.1, "T1f": 1.0, "T2f": 1 / 15, "Rx": 30.0,
                                   "T1s": 1 / 6.5, "T2s": 10e-6, "B1": 1.0, "omega0": 0.0})
    signal = model.simulate(theta)[0]
    published = np.r_[PUBLISHED_HEAD, PUBLISHED_TAIL]
    ours = np.r_[signal.real[:10].numpy(), signal.real[-9:].numpy()]
    peak = np.abs(published).max()
    assert np.abs(ours - published).max() <= 2e-5 * peak
    assert signal.imag.abs().max() <= 1e-12
