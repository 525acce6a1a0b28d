"""CLI commands of the core: models, simulate, crb, and their error handling."""

import json
import subprocess
import sys

import numpy as np
import pytest

import crbnet
from crbnet import models
from crbnet.cli.app import main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "crbnet", *args], capture_output=True, text=True)


def test_crb_json_matches_python_api(capsys):
    assert main(["crb", "--model", "fisp_mrf", "--param", "T1=1.2", "--param", "T2=0.05",
                 "--snr", "40", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    model = models.get("fisp_mrf")
    expected = crbnet.crb(model, model.theta_from_dict({"T1": 1.2, "T2": 0.05}), sigma=1 / 40)[0]
    assert out["model"] == "fisp_mrf"
    assert out["parameters"] == {"T1": 1.2, "T2": 0.05}
    assert out["sigma"] == pytest.approx(1 / 40)
    assert out["crb"]["T1"] == pytest.approx(expected[0].item(), rel=1e-12)
    assert out["std"]["T2"] == pytest.approx(expected[1].sqrt().item(), rel=1e-12)


def test_crb_table_and_times(capsys):
    assert main(["crb", "--model", "t2_decay", "--times", "0.01,0.02,0.04,0.08",
                 "--param", "T2=0.05", "--sigma", "0.01"]) == 0
    out = capsys.readouterr().out
    assert "T2" in out and "SNR" in out


def test_simulate_writes_model_signal(tmp_path):
    out = tmp_path / "s.npy"
    assert main(["simulate", "--model", "mt_hybrid_state", "--param", "m0s=0.1",
                 "--param", "T2s=1e-5", "--out", str(out)]) == 0
    sig = np.load(out)
    model = models.get("mt_hybrid_state")
    ref = model.simulate(model.theta_from_dict({"m0s": 0.1, "T2s": 1e-5}, fill_defaults=True))
    assert sig.dtype == np.complex128 and sig.shape == (1, 666)
    np.testing.assert_array_equal(sig, ref.numpy())


def test_models_json_lists_every_model(capsys):
    assert main(["models", "--json"]) == 0
    listed = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    assert set(listed) == set(models.names())
    names = [p["name"] for p in listed["mt_hybrid_state"]["parameters"]]
    assert names == ["m0s", "T1f", "T2f", "Rx", "T1s", "T2s", "B1"]
    for name, entry in listed.items():       # kind and training defaults from the model class
        cls = models.resolve(name)
        assert entry["sequence_kind"] == cls.sequence_kind
        assert entry["training_defaults"] == cls.training_defaults


@pytest.mark.parametrize("args, message", [
    (["crb", "--model", "nope"], "unknown model"),
    (["crb", "--model", "fisp_mrf", "--param", "T3=1"], "unknown parameter 'T3'"),
    (["crb", "--model", "fisp_mrf", "--param", "T1=-1"], "outside its bounds"),
    (["crb", "--model", "fisp_mrf", "--param", "T1"], "NAME=VALUE"),
    (["crb", "--model", "fisp_mrf", "--param", "T1=abc"], "not a number"),
    (["crb", "--model", "fisp_mrf", "--snr", "-3"], "positive"),
    (["crb", "--model", "mt_hybrid_state", "--param", "m0s=0"], "singular"),
    (["crb", "--model", "mt_hybrid_state", "--sequence", "missing.json"], "not found"),
    (["crb", "--model", "fisp_mrf", "--times", "0.1,0.2"], "--times applies"),
])
def test_bad_input_gives_one_line_and_exit_2(args, message):
    res = run_cli(*args)
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("crbnet: error:"), res.stderr
    assert message in lines[0]


def test_malformed_sequence_file_exit_2(tmp_path):
    bad = tmp_path / "seq.json"
    bad.write_text(json.dumps({"TR": 0.0045, "theta": [0.1, 0.2]}))
    res = run_cli("crb", "--model", "mt_hybrid_state", "--sequence", str(bad))
    assert res.returncode == 2 and "missing field" in res.stderr


def test_sequence_file_is_used(tmp_path):
    seq = tmp_path / "te.json"
    seq.write_text(json.dumps({"times": [0.01, 0.02, 0.03]}))
    out = tmp_path / "s.npy"
    assert main(["simulate", "--model", "t2_decay", "--sequence", str(seq), "--param", "T2=0.02",
                 "--out", str(out)]) == 0
    signal = np.load(out)
    assert signal.shape == (1, 3)          # the file's 3 echoes, not the default 32
    np.testing.assert_allclose(signal[0].real, np.exp(-np.array([1, 2, 3]) / 2.0))
    np.testing.assert_array_equal(signal[0].imag, 0.0)
