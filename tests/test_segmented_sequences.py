"""Segmented sequences: the .mat (v5 and v7.3) and JSON readers, choosing a file's kind, the TR
option, hardware figures per segment, and mt_hybrid_state playing them (each segment a cycle).

The .mat files are written here: v5 with scipy.io.savemat, v7.3 with h5py the way MATLAB does
(a 512-byte userblock holding MATLAB's text header, dimensions reversed, MATLAB_class
attributes)."""

import json
import math
import re
import subprocess
import sys

import h5py
import numpy as np
import pytest
import scipy.io
import torch

from crbnet import models, sequences
from crbnet.cli import app as cli
from crbnet.learning.checkpoint import model_from_dict, model_to_dict
from crbnet.physics import hardware
from crbnet.stats.crb import _signal_and_jacobian, crb, fisher_information, signal_and_jacobian

pytestmark = pytest.mark.usefixtures("one_thread")

TR = 4.5e-3


def segments(n_seg: int = 2, n: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(alpha, TRF)`` [S, N]: an inversion (π in 500 µs) then a smooth train per segment, with
    a few zero flips, within 3 T limits."""
    rng = np.random.default_rng(seed)
    alpha = rng.uniform(0.1, 2.0, (n_seg, n))
    trf = rng.uniform(3.5e-4, 8e-4, (n_seg, n))          # peak B1 ≤ 23.5 µT
    alpha[:, 0], trf[:, 0] = math.pi, 5e-4
    alpha[:, n // 2] = 0.0
    return alpha, trf


def write_v5(path, variables: dict) -> None:
    """``variables`` in MATLAB's orientation (pulses × segments) as a v5 MAT file."""
    scipy.io.savemat(str(path), variables, format="5")


def write_v73(path, variables: dict, classes: dict | None = None) -> None:
    """``variables`` (MATLAB orientation) as MATLAB writes v7.3: HDF5 after a 512-byte
    userblock with the text header, each array stored with its dimensions reversed."""
    with h5py.File(path, "w", userblock_size=512) as fh:
        for name, value in variables.items():
            value = np.asarray(value)
            ds = fh.create_dataset(name, data=np.atleast_2d(value).T)
            cls = (classes or {}).get(name, "logical" if value.dtype == bool else "double")
            ds.attrs["MATLAB_class"] = np.bytes_(cls)
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Dec  7 00:00:00 2026 " \
             b"HDF5 schema 1.00 ."
    with open(path, "r+b") as fh:
        fh.write(header.ljust(116) + b"\x00" * 8 + b"\x00\x02IM")


# ---- readers ------------------------------------------------------------------------------------

def test_v5_and_v73_files_of_one_matlab_variable_give_one_sequence(tmp_path):
    alpha, trf = segments(3, 10)
    inversion = np.zeros_like(alpha, dtype=bool)
    inversion[:, 0] = True
    matlab = {"alpha": alpha.T, "TRF": trf.T, "TR": TR, "inversion": inversion.T}
    write_v5(tmp_path / "v5.mat", matlab)
    write_v73(tmp_path / "v73.mat", matlab)
    assert h5py.is_hdf5(tmp_path / "v73.mat")
    assert (tmp_path / "v73.mat").read_bytes().startswith(b"MATLAB 7.3 MAT-file")
    a, b = (sequences.load(tmp_path / f, "segmented") for f in ("v5.mat", "v73.mat"))
    for seq in (a, b):
        assert seq.n_segments == 3 and seq.pulses_per_segment == 10 and seq.TR == TR
        np.testing.assert_array_equal(seq.alpha, alpha)
        np.testing.assert_array_equal(seq.TRF, trf)
        np.testing.assert_array_equal(seq.inversion, inversion)
    assert sequences.sequence_hash(a) == sequences.sequence_hash(b)


@pytest.mark.parametrize("write", [write_v5, write_v73], ids=["v5", "v7.3"])
def test_orientation_rule_segments_are_matlab_columns(tmp_path, write):
    """pulses × segments reads as segments of pulses; a vector (row or column) is one segment;
    a matrix with more columns than rows (a transposed file) is refused."""
    alpha, trf = segments(2, 7)
    write(tmp_path / "cols.mat", {"alpha": alpha.T, "TRF": trf.T})
    seq = sequences.load(tmp_path / "cols.mat", "segmented")
    assert (seq.n_segments, seq.pulses_per_segment) == (2, 7) and seq.TR is None
    np.testing.assert_array_equal(seq.alpha[1], alpha[1])
    for shape in ((1, 7), (7, 1)):
        write(tmp_path / "vec.mat", {"alpha": alpha[0].reshape(shape),
                                     "TRF": trf[0].reshape(shape)})
        seq = sequences.load(tmp_path / "vec.mat", "segmented")
        assert seq.alpha.shape == (1, 7)
        np.testing.assert_array_equal(seq.alpha[0], alpha[0])
    write(tmp_path / "rows.mat", {"alpha": alpha, "TRF": trf})    # 2 × 7: segments in rows
    with pytest.raises(sequences.SequenceError, match="2 × 7 in MATLAB.*transposed"):
        sequences.load(tmp_path / "rows.mat", "segmented")


def test_json_round_trip_and_kind_choice(tmp_path, oct_csv):
    alpha, trf = segments(2, 6)
    seq = sequences.SegmentedSequence(alpha=alpha, TRF=trf, TR=TR)
    path = tmp_path / "seg.json"
    path.write_text(sequences.to_json(seq))
    both = ("mt", "segmented")
    again = sequences.load_for(path, both)
    assert again.kind == "segmented"
    assert sequences.sequence_hash(again) == sequences.sequence_hash(seq)
    assert sequences.sequence_hash(sequences.from_dict(seq.to_dict(), "segmented")) \
        == sequences.sequence_hash(seq)
    # A flat list is one segment; an explicit "kind" key is accepted.
    path.write_text(json.dumps({"kind": "segmented", "alpha": alpha[0].tolist(),
                                "TRF": trf[0].tolist(), "rf_phase_increment": 0.5}))
    flat = sequences.load_for(path, both)
    assert flat.alpha.shape == (1, 6) and flat.TR is None and flat.rf_phase_increment == 0.5
    assert flat.inversion[0].tolist() == [True] + [False] * 5
    # An 'mt' object, a control-point CSV and a .mat file pick their own kinds.
    mt_path = tmp_path / "mt.json"
    mt_path.write_text(sequences.to_json(sequences.default_mt_sequence()))
    assert sequences.load_for(mt_path, both).kind == "mt"
    assert sequences.load_for(oct_csv, both).kind == "mt"
    write_v5(tmp_path / "s.mat", {"alpha": alpha.T, "TRF": trf.T})
    assert sequences.load_for(tmp_path / "s.mat", both).kind == "segmented"
    with pytest.raises(sequences.SequenceError, match="MATLAB .mat sequence files are read"):
        sequences.load(tmp_path / "s.mat", "mt")
    # An object that fits neither is read as the kind it resembles most: its error says why.
    mt_path.write_text('{"alpha": [1.0], "TR": 0.004}')
    with pytest.raises(sequences.SequenceError, match="missing field.*TRF"):
        sequences.load_for(mt_path, both)
    mt_path.write_text('{"theta": [1.0], "TR": 0.004}')
    with pytest.raises(sequences.SequenceError, match=r"missing field\(s\): TRF$"):
        sequences.load_for(mt_path, both)


def test_two_kinds_that_fit_one_object_are_refused_as_ambiguous(tmp_path):
    from dataclasses import dataclass, field

    @sequences.register_sequence_kind
    @dataclass(frozen=True, eq=False)
    class Twin:
        alpha: list
        TRF: list
        kind: str = field(default="twin_test", init=False)

    try:
        path = tmp_path / "s.json"
        path.write_text('{"alpha": [1.0, 2.0], "TRF": [1e-3, 1e-3]}')
        with pytest.raises(sequences.SequenceError, match="fit kinds segmented and twin_test"):
            sequences.load_for(path, ("segmented", "twin_test"))
        path.write_text('{"kind": "twin_test", "alpha": [1.0, 2.0], "TRF": [1e-3, 1e-3]}')
        assert sequences.load_for(path, ("segmented", "twin_test")).kind == "twin_test"
    finally:
        del sequences.KINDS["twin_test"]


# ---- bad files: one line each through the CLI ---------------------------------------------------

def _matlab_complex(matlab: np.ndarray) -> np.ndarray:
    """A complex array the way MATLAB stores it in HDF5: a compound of 'real' and 'imag'."""
    out = np.zeros(matlab.shape, dtype=[("real", "<f8"), ("imag", "<f8")])
    out["real"], out["imag"] = matlab, 0.5
    return out


def _bad_files():
    alpha, trf = segments(2, 6)
    good = {"alpha": alpha.T, "TRF": trf.T}
    nan, inf, neg, long = (trf.T.copy() for _ in range(4))
    nan[2, 1], inf[3, 0], neg[1, 1], long[1, 1] = np.nan, np.inf, 0.0, 5e-3
    return {
        "not a mat file": (None, None, "is not a MATLAB .mat file"),
        "missing alpha": (write_v73, {"TRF": trf.T}, "no variable.*alpha"),
        "missing TRF": (write_v5, {"alpha": alpha.T}, "no variable.*TRF"),
        "shapes differ": (write_v5, {"alpha": alpha.T, "TRF": trf.T[:5]}, "must match"),
        "NaN": (write_v73, {**good, "TRF": nan}, "NaN or Inf"),
        "Inf": (write_v5, {**good, "TRF": inf}, "NaN or Inf"),
        "TRF zero": (write_v5, {**good, "TRF": neg}, "TRF must be positive"),
        "TRF beyond TR": (write_v73, {**good, "TRF": long, "TR": TR}, r"\(0, TR"),
        "complex v5": (write_v5, {**good, "alpha": alpha.T * (1 + 1j)}, "complex"),
        "complex v7.3": (write_v73, {**good, "alpha": _matlab_complex(alpha.T)}, "complex"),
        "text": (write_v5, {**good, "alpha": "pi"}, "not a numeric array"),
        "char v7.3": (write_v73, {**good, "TRF": np.full((6, 2), 65.0)},
                      "MATLAB char"),
        "empty": (write_v5, {**good, "alpha": np.zeros((0, 0))}, "empty"),
        "transposed": (write_v73, {"alpha": alpha, "TRF": trf}, "transposed"),
        "TR not a number": (write_v5, {**good, "TR": [1e-3, 2e-3]}, "TR must be one number"),
        "inversion not 0/1": (write_v5, {**good, "inversion": np.full((6, 2), 2.0)},
                              "true/false or 0/1"),
    }


BAD = _bad_files()


@pytest.mark.parametrize("case", list(BAD))
def test_bad_mat_files_are_refused_with_one_line(case, tmp_path, capsys):
    write, variables, message = BAD[case]
    path = tmp_path / "bad.mat"
    if write is None:
        path.write_text("alpha,TRF\n1,2\n")
    elif case == "char v7.3":
        write(path, variables, classes={"TRF": "char"})
    else:
        write(path, variables)
    rc = cli.main(["simulate", "--model", "mt_hybrid_state", "--sequence", str(path),
                   "--model-option", "TR=4.5e-3", "--out", str(tmp_path / "s.npy")])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("crbnet: error") and "Traceback" not in err
    assert re.search(message, err), err
    assert not (tmp_path / "s.npy").exists()


def test_a_real_process_refuses_a_bad_mat_file_with_one_line(tmp_path):
    alpha, trf = segments(2, 6)
    write_v73(tmp_path / "bad.mat", {"TRF": trf.T})
    proc = subprocess.run([sys.executable, "-m", "crbnet", "simulate", "--model",
                           "mt_hybrid_state", "--sequence", str(tmp_path / "bad.mat"),
                           "--out", str(tmp_path / "s.npy")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "alpha" in proc.stderr


# ---- the TR option ------------------------------------------------------------------------------

def test_tr_option_rules_and_round_trip(tmp_path, capsys):
    alpha, trf = segments(2, 8)
    write_v73(tmp_path / "no_tr.mat", {"alpha": alpha.T, "TRF": trf.T})
    write_v5(tmp_path / "tr.mat", {"alpha": alpha.T, "TRF": trf.T, "TR": TR})
    base = ["simulate", "--model", "mt_hybrid_state", "--out", str(tmp_path / "s.npy")]
    rc = cli.main(base + ["--sequence", str(tmp_path / "no_tr.mat")])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "--model-option TR=" in err
    rc = cli.main(base + ["--sequence", str(tmp_path / "tr.mat"), "--model-option", "TR=3e-3"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "give only one" in err
    assert cli.main(base + ["--sequence", str(tmp_path / "no_tr.mat"), "--model-option",
                            f"TR={TR}"]) == 0
    out = capsys.readouterr().out
    assert "2 segments × 8 pulses" in out and len(out.strip().splitlines()) == 2
    with_option = models.get("mt_hybrid_state", tmp_path / "no_tr.mat", TR=TR)
    from_file = models.get("mt_hybrid_state", tmp_path / "tr.mat")
    assert with_option.sequence.TR == TR and with_option.option_values == {"TR": TR}
    assert sequences.sequence_hash(with_option.sequence) \
        == sequences.sequence_hash(from_file.sequence)
    # The record carries the TR in its sequence: it rebuilds with or without the option.
    for model in (with_option, from_file):
        record = json.loads(json.dumps(model_to_dict(model)))
        again = model_from_dict(record)
        assert models.same_model(again, model) and again.sequence.TR == TR
        del record["options"]
        assert models.same_model(model_from_dict(record), model)
    # 'mt' sequences: the option may repeat their TR but not contradict it.
    assert models.get("mt_hybrid_state", TR=4.5e-3).sequence.TR == 4.5e-3
    with pytest.raises(sequences.SequenceError, match="give only one"):
        models.get("mt_hybrid_state", TR=3e-3)


# ---- hardware -----------------------------------------------------------------------------------

def test_hardware_figures_are_per_segment():
    alpha = np.array([[math.pi, 0.5, 0.0, 0.4], [math.pi, 1.5, 1.2, 0.0]])
    trf = np.array([[5e-4, 2e-4, 3e-4, 4e-4], [5e-4, 3e-4, 6e-4, 1e-4]])
    seq = sequences.SegmentedSequence(alpha=alpha, TRF=trf, TR=TR)
    s = hardware.rf_summary(seq)
    power = [sum((a / t) ** 2 * t for a, t in zip(alpha[k], trf[k])) / (4 * TR) for k in (0, 1)]
    gamma = hardware.GAMMA
    for k, part in enumerate(s["segments"]):
        assert part["rf_power"] == pytest.approx(power[k], rel=1e-12)
        assert part["duration"] == pytest.approx(4 * TR)
        assert part["peak_b1"] == pytest.approx(max(alpha[k] / trf[k]) / gamma, rel=1e-12)
    # Durations of pulses that rotate: the zero flips' TRF (400 µs, 100 µs) do not count.
    assert (s["segments"][0]["trf_min"], s["segments"][0]["trf_max"]) == (2e-4, 5e-4)
    assert (s["segments"][1]["trf_min"], s["segments"][1]["trf_max"]) == (3e-4, 6e-4)
    assert s["worst_segment"] == int(np.argmax(power)) == 1
    assert s["rf_power"] == pytest.approx(max(power))
    assert s["duration"] == pytest.approx(8 * TR) and s["n_pulses"] == 8
    # The power limit is checked per segment: between the two segments' powers only one fails.
    limits = hardware.HardwareLimits(rf_power_max=0.5 * (power[0] + power[1]), trf_max=1e-3)
    over = [v for v in hardware.violations(seq, limits) if "RF power" in v]
    assert len(over) == 1 and over[0].endswith("in segment(s) 1")
    line = hardware.describe(seq)
    assert "\n" not in line and line.startswith("2 segments × 4 pulses")
    assert "worst segment 1" in line and "pulses 200–600 µs" in line
    assert "RF power unknown" in hardware.describe(sequences.SegmentedSequence(alpha, trf))


# ---- mt_hybrid_state on segmented sequences -----------------------------------------------------

def _equivalent_pair(n: int = 30, seed: int = 1):
    """An 'mt' cycle and the one-segment sequence it is: α = 2θ, the first pulse an inversion
    (π) whose TRF is T_inv, and the 'mt' cycle's first TR holding its second TR's θ and TRF."""
    rng = np.random.default_rng(seed)
    theta = rng.uniform(0.05, 1.2, n)
    trf = rng.uniform(1e-4, 1e-3, n)
    theta[0], trf[0] = theta[1], trf[1]
    mt = sequences.MTSequence(TR=TR, theta=theta, TRF=trf, T_inv=6e-4)
    alpha, seg_trf = 2 * theta, trf.copy()
    alpha[0], seg_trf[0] = math.pi, 6e-4
    return mt, sequences.SegmentedSequence(alpha=alpha[None], TRF=seg_trf[None], TR=TR)


def _points(model, n: int = 5, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    lo, hi = (torch.tensor(v, dtype=torch.float64) for v in zip(*model.train_ranges.values()))
    return lo + (hi - lo) * torch.rand(n, len(lo), generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "tensor"])
def test_one_segment_equals_the_mt_cycle_it_maps_to(compiled):
    mt, seg = _equivalent_pair()
    a, b = (models.get("mt_hybrid_state", s, fixed={}) for s in (mt, seg))
    a.use_compiled_kernel = b.use_compiled_kernel = compiled
    x = _points(a)
    assert b.n_timepoints == a.n_timepoints == 30
    torch.testing.assert_close(b.simulate(x), a.simulate(x), rtol=0, atol=1e-15)
    torch.testing.assert_close(signal_and_jacobian(b, x)[1], signal_and_jacobian(a, x)[1],
                               rtol=1e-12, atol=1e-15)


def test_compiled_route_equals_the_tensor_route_on_two_segments():
    alpha, trf = segments(2, 14, seed=3)
    model = models.get("mt_hybrid_state", sequences.SegmentedSequence(alpha, trf, TR=TR),
                       fixed={})
    x = _points(model, 6)
    fast = model.explicit_signal_and_jacobian(x)
    gram = model.explicit_real_gram(x)
    assert fast is not None and fast[0].shape == (6, 28) and fast[1].shape == (7, 6, 28)
    model.use_compiled_kernel = False
    try:
        assert model.explicit_signal_and_jacobian(x) is None
        signal, columns = _signal_and_jacobian(model, x)
    finally:
        model.use_compiled_kernel = True
    torch.testing.assert_close(fast[0], signal.real, rtol=1e-11, atol=1e-14)
    torch.testing.assert_close(fast[1], columns.real, rtol=1e-9, atol=1e-12)
    R = torch.cat((fast[1], fast[0][None])).permute(1, 0, 2)
    torch.testing.assert_close(gram, R @ R.mT, rtol=1e-12, atol=1e-14)


def test_crb_of_two_segments_is_that_of_the_summed_fisher_information():
    alpha, trf = segments(2, 60, seed=5)
    both = models.get("mt_hybrid_state", sequences.SegmentedSequence(alpha, trf, TR=TR))
    parts = [models.get("mt_hybrid_state", sequences.SegmentedSequence(alpha[k], trf[k], TR=TR))
             for k in (0, 1)]
    x = _points(both, 4, seed=2)
    F = sum(fisher_information(jac, signal)
            for signal, jac in (signal_and_jacobian(m, x) for m in parts))
    P = both.n_parameters
    # Inverted on the parameters' own scale (F is ill-conditioned in SI units).
    scale = torch.cat((x, torch.ones(x.shape[0], 2, dtype=x.dtype)), 1)
    scaled = torch.linalg.inv(F * scale[:, :, None] * scale[:, None, :])
    expected = scaled.diagonal(dim1=-2, dim2=-1)[:, :P] * x ** 2
    # F is ill-conditioned (cond ~1e7 on that scale): agreement to ~cond·eps.
    torch.testing.assert_close(crb(both, x), expected, rtol=1e-7, atol=0)
    # ...and neither segment alone gives it.
    assert not torch.allclose(crb(parts[0], x, warn=False), expected, rtol=1e-3)


def test_segments_the_model_cannot_play_are_refused_with_one_line():
    alpha, trf = segments(2, 6)
    cases = {
        "rf_phase_increment": dict(rf_phase_increment=0.3),
        "inversion pulses at 0, 3": dict(inversion=np.tile([1, 0, 0, 1, 0, 0], (2, 1))),
        "inversion pulses at none": dict(inversion=np.zeros((2, 6))),
    }
    for message, extra in cases.items():
        with pytest.raises(sequences.SequenceError, match=message):
            models.get("mt_hybrid_state", sequences.SegmentedSequence(alpha, trf, TR=TR,
                                                                      **extra))
    weak = alpha.copy()
    weak[1, 0] = 2.0
    with pytest.raises(sequences.SequenceError, match="segment 1 has alpha 2 rad"):
        models.get("mt_hybrid_state", sequences.SegmentedSequence(weak, trf, TR=TR))
    with pytest.raises(sequences.SequenceError, match="at least 2 pulses"):
        models.get("mt_hybrid_state", sequences.SegmentedSequence(alpha[:, :1], trf[:, :1],
                                                                  TR=TR))


def test_models_command_lists_the_sequence_kinds(capsys):
    assert cli.main(["models", "--model", "mt_hybrid_state"]) == 0
    out = capsys.readouterr().out
    assert "sequence kinds mt, segmented (default mt)" in out and "option TR" in out
    with pytest.raises(SystemExit):
        cli.main(["simulate", "--help"])
    assert "MATLAB .mat" in " ".join(capsys.readouterr().out.split())


def test_design_plays_a_segmented_sequence_with_mt_hybrid_state(tmp_path, capsys):
    """Both MT models design segmented sequences: mt_hybrid_state through its per-segment map
    (the inversions kept), within the limits."""
    alpha, trf = segments(2, 8)
    write_v5(tmp_path / "s.mat", {"alpha": alpha.T, "TRF": trf.T, "TR": TR})
    rc = cli.main(["design", "--model", "mt_hybrid_state", "--sequence", str(tmp_path / "s.mat"),
                   "--control-points", "4", "--starts", "1", "--max-iterations", "3",
                   "--out", str(tmp_path / "design")])
    assert rc == 0, capsys.readouterr().err
    designed = sequences.load(tmp_path / "design" / "sequence.json", "segmented")
    assert designed.alpha.shape == alpha.shape
    assert np.allclose(designed.alpha[:, 0], alpha[:, 0]) and designed.inversion[:, 0].all()
    assert hardware.violations(designed) == []
