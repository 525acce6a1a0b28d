import json

import numpy as np
import pytest

from crbnet import sequences as seqs
from crbnet.physics.sequences import SequenceError


def test_hann_interpolation_hits_control_points_and_midpoints():
    cp = np.array([0.1, 0.5, 0.3, 0.9])
    out = seqs.hann_interpolate(cp, 40)  # 10 samples between consecutive points
    np.testing.assert_allclose(out[::10], cp)
    # halfway (u = 1/2) both weights are (1 - cos(pi/2)) / 2 = 1/2
    np.testing.assert_allclose(out[5], (cp[0] + cp[1]) / 2)
    # the train is periodic: the last segment runs from the last point back to the first
    u = 0.3
    expected = (cp[3] * (1 - np.cos(np.pi * (1 - u))) + cp[0] * (1 - np.cos(np.pi * u))) / 2
    np.testing.assert_allclose(out[33], expected)


def test_control_point_csv_gives_666_trs(oct_csv):
    seq = seqs.load(oct_csv, "mt")
    assert seq.n_timepoints == 666
    assert seq.TR == pytest.approx(4.5e-3)
    assert 0 <= seq.theta.min() and seq.theta.max() <= np.pi / 2 + 1e-6
    assert seq.TRF.max() <= 1e-3 + 1e-9 and seq.TRF.min() > 0
    # the control points land on every 111th TR, TRF converted from ms to s
    from conftest import OCT_CSV_POINTS
    points = np.array(OCT_CSV_POINTS)
    np.testing.assert_allclose(seq.theta[::111], points[:, 0], rtol=1e-12)
    np.testing.assert_allclose(seq.TRF[::111], points[:, 1] * 1e-3, rtol=1e-12)
    # between points the Hann weights keep values inside the neighbours' range
    assert seq.theta[1:111].min() >= 0.20 - 1e-12 and seq.theta[1:111].max() <= 0.55 + 1e-12


def test_default_mt_sequence_is_within_documented_limits():
    seq = seqs.default_mt_sequence()
    assert seq.n_timepoints == 666 and seq.TR == 4.5e-3
    assert seq.cycle_duration == pytest.approx(2.997)
    assert seq.theta.min() >= 0 and seq.theta.max() <= np.pi / 2 + 1e-12
    assert seq.TRF.min() >= 0.1e-3 - 1e-12 and seq.TRF.max() <= 1e-3 + 1e-12


def test_json_round_trip(tmp_path):
    seq = seqs.default_fisp_sequence(50)
    path = tmp_path / "fisp.json"
    path.write_text(seqs.to_json(seq))
    back = seqs.load(path, "fisp")
    np.testing.assert_array_equal(back.flip, seq.flip)
    np.testing.assert_array_equal(back.TR, seq.TR)
    assert seqs.sequence_hash(back) == seqs.sequence_hash(seq)
    assert seqs.sequence_hash(seqs.default_fisp_sequence(51)) != seqs.sequence_hash(seq)


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    (json.dumps({"TR": 0.0045, "theta": [0.1, 0.2]}), "missing field"),
    (json.dumps({"TR": 0.0045, "theta": [0.1, 0.2], "TRF": [1e-3]}), "must match"),
    (json.dumps({"TR": -1, "theta": [0.1], "TRF": [1e-3]}), "positive"),
    (json.dumps({"TR": 0.0045, "theta": [0.1], "TRF": [1e-3], "foo": 1}), "unknown field"),
    (json.dumps({"TR": 0.0045, "theta": ["a"], "TRF": [1e-3]}), "list of numbers"),
    (json.dumps({"TR": 0.0045, "theta": [0.1], "TRF": [0.01]}), "TRF must lie"),
])
def test_malformed_mt_sequence_is_refused(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(SequenceError, match=message):
        seqs.load(path, "mt")


def test_malformed_csv_is_refused(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("theta_rad,trf_ms\n0.1,1.0\n0.2,oops\n")
    with pytest.raises(SequenceError, match="malformed control point"):
        seqs.load(path, "mt")
    path.write_text("a,b\n0.1,1.0\n")
    with pytest.raises(SequenceError, match="header"):
        seqs.load(path, "mt")
