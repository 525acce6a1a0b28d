"""A model of one's own, from a file (examples/two_compartment_t2.py), through the whole CLI:
crb, fit (NLLS), train, evaluate, a checkpoint round trip; module and plugin specs; model
options; the phantom's message for a model without tissue values."""

import importlib.metadata
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_crb import brute_force_crb  # finite differences over (θ, Re M0, Im M0)

import crbnet
from crbnet import models
from crbnet.cli import app as cli

ROOT = Path(__file__).resolve().parents[1]
SPEC = f"{ROOT / 'examples' / 'two_compartment_t2.py'}:TwoCompartmentT2"
TINY = ["--set", "data.batches_per_epoch=3", "--set", "data.batch_size=64",
        "--set", "data.val_size=64", "--set", "subspace.n_fit=256", "--set", "subspace.n_check=8",
        "--set", "net.width=16", "--set", "net.depth=1", "--no-progress"]


def test_file_model_crb_matches_finite_differences(capsys):
    assert cli.main(["crb", "--model", SPEC, "--param", "fs=0.25", "--param", "T2s=0.012",
                     "--param", "T2l=0.09", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    model = models.get(SPEC)
    assert model.name == "two_compartment_t2"
    theta = torch.tensor([[0.25, 0.012, 0.09]], dtype=torch.float64)
    expected = brute_force_crb(model, theta, 1.0, 1.0 + 0j)
    got = np.array([out["crb"][p] for p in ("fs", "T2s", "T2l")])
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_models_command_describes_a_file_model(capsys):
    assert cli.main(["models", "--model", SPEC, "--json"]) == 0
    (described,) = json.loads(capsys.readouterr().out)
    assert described["name"] == "two_compartment_t2" and described["n_timepoints"] == 48
    assert [p["name"] for p in described["parameters"]] == ["fs", "T2s", "T2l"]
    assert described["summary"].startswith("Two non-exchanging T2 compartments")


def test_file_model_nlls_fit_recovers_noiseless_truth(tmp_path, capsys):
    model = models.get(SPEC)
    truth = torch.tensor([[0.1, 0.010, 0.06], [0.3, 0.020, 0.12], [0.2, 0.015, 0.08]],
                         dtype=torch.float64)
    m0 = torch.tensor([1.0, 0.5j, -0.7 + 0.7j], dtype=torch.complex128)
    np.save(tmp_path / "y.npy", (m0[:, None] * model.simulate(truth)).numpy())
    assert cli.main(["fit", "--method", "nlls", "--model", SPEC, "--input",
                     str(tmp_path / "y.npy"), "--out", str(tmp_path / "est.npy")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "est.npy"), truth.numpy(), rtol=1e-5)


def test_file_model_train_evaluate_and_checkpoint_round_trip(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)                     # the spec as a user types it, relative
    spec = "examples/two_compartment_t2.py:TwoCompartmentT2"
    run = tmp_path / "run"
    assert cli.main(["train", "--model", spec, "--snr", "100", "--out", str(run),
                     "--epochs", "1", *TINY]) == 0
    payload = torch.load(run / "checkpoint.pt", weights_only=True)["payload"]
    assert payload["model"]["name"] == "two_compartment_t2"
    assert payload["model"]["source"] == spec
    net = crbnet.load(run)                                      # round trip via the record
    assert net.parameters == ("fs", "T2s", "T2l")
    theta = torch.tensor([[0.2, 0.015, 0.08]], dtype=torch.float64)
    assert torch.isfinite(net.predict(net.model.simulate(theta))).all()
    assert cli.main(["evaluate", "--checkpoint", str(run), "--out", str(tmp_path / "ev"),
                     "--grid", "2", "--realizations", "4", "--snr", "100"]) == 0
    doc = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert set(doc["summary"]) >= {"fs", "T2s", "T2l"}
    # From a directory where that spec does not name a file: refused with one line.
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert cli.main(["evaluate", "--checkpoint", str(run), "--out", str(tmp_path / "ev2"),
                     "--grid", "2", "--realizations", "4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot be imported" in err and spec in err
    assert not (tmp_path / "ev2").exists()


def test_module_and_plugin_specs_give_the_same_model(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    by_module = models.resolve("two_compartment_t2:TwoCompartmentT2")
    assert by_module.name == "two_compartment_t2" and by_module.sequence_kind == "times"
    plugin = importlib.metadata.EntryPoint(name="two_t2",
                                           value="two_compartment_t2:TwoCompartmentT2",
                                           group=models.ENTRY_POINT_GROUP)
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group=None: [plugin] if group == models.ENTRY_POINT_GROUP else [])
    assert "two_t2" in models.names()
    assert models.resolve("two_t2") is by_module
    theta = torch.tensor([[0.2, 0.015, 0.08]], dtype=torch.float64)
    torch.testing.assert_close(models.get("two_t2").simulate(theta),
                               models.get(SPEC).simulate(theta))


@pytest.mark.parametrize("spec, message", [
    ("examples/nope.py:TwoCompartmentT2", "not found"),
    (f"{ROOT / 'examples' / 'two_compartment_t2.py'}:Nope", "no class"),
    ("crbnet.physics.sequences:MTSequence", "not a SignalModel"),
    ("no_such_model", "unknown model"),
])
def test_bad_model_specs_give_one_line(capsys, spec, message):
    assert cli.main(["crb", "--model", spec]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_model_option_reaches_the_model_and_is_checked(tmp_path, capsys):
    signals = []
    for order in ("2", "25"):
        out = tmp_path / f"s{order}.npy"
        assert cli.main(["simulate", "--model", "fisp_mrf", "--model-option",
                         f"max_order={order}", "--param", "T1=1", "--param", "T2=0.2",
                         "--out", str(out)]) == 0
        signals.append(np.load(out))
    assert np.abs(signals[0] - signals[1]).max() > 1e-3      # truncation at order 2 shows
    capsys.readouterr()
    assert cli.main(["simulate", "--model", "fisp_mrf", "--model-option", "depth=3",
                     "--out", str(tmp_path / "x.npy")]) == 2
    assert "max_order" in capsys.readouterr().err
    assert cli.main(["simulate", "--model", "t2_decay", "--model-option", "max_order=3",
                     "--out", str(tmp_path / "x.npy")]) == 2
    assert "none" in capsys.readouterr().err


def test_phantom_of_a_model_without_tissue_values(tmp_path, capsys):
    assert cli.main(["phantom", "--model", SPEC, "--out", str(tmp_path / "ph"),
                     "--shape", "8x8", "--snr", "50"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "phantom_tissues" in err


def test_phantom_uses_a_models_own_tissue_values():
    from crbnet.imaging.phantom import make_phantom
    base = models.resolve(SPEC)
    values = {"CSF": (0.0, 0.02, 1.5), "GM": (0.1, 0.015, 0.09), "WM": (0.25, 0.012, 0.07),
              "lesion": (0.1, 0.015, 0.11)}

    class WithTissues(base):
        phantom_tissues = {3.0: {t: {"fs": (v[0], "example"), "T2s": (v[1], "example"),
                                     "T2l": (v[2], "example")} for t, v in values.items()}}

    phantom = make_phantom(WithTissues(), shape=(16, 16), snr=50, variation=0.0, seed=0)
    wm = phantom.labels == 3
    assert wm.any()
    np.testing.assert_allclose(phantom.truth["fs"][wm], 0.25)


def test_config_model_table_sets_model_options(tmp_path):
    """``[model] options`` in a config file reach the model like --model-option, converted with
    the declared type; the command line wins; a value of the wrong kind is one clear error."""
    import argparse

    from crbnet.cli import train as train_command
    from crbnet.cli._common import build_model
    from crbnet.errors import InputError

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    train_command.register(sub)
    config = tmp_path / "c.toml"

    def model_for(cli_args: list[str], table: dict):
        args = parser.parse_args(["train", "--model", "fisp_mrf", "--out", "x", *cli_args])
        train_command.apply_model_table(args, table, config)
        return build_model(args)

    assert model_for([], {"options": {"max_order": 3}}).max_order == 3
    assert model_for(["--model-option", "max_order=5"],
                     {"options": {"max_order": 3}}).max_order == 5
    assert model_for([], {}).max_order == models.get("fisp_mrf").max_order   # untouched default
    with pytest.raises(InputError, match="max_order expects int"):
        model_for([], {"options": {"max_order": "many"}})
    with pytest.raises(InputError, match="no option 'depth'"):
        model_for([], {"options": {"depth": 3}})
