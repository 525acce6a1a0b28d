"""The one plugin mechanism (crbnet.plugins) for losses, estimators and sequence kinds (models:
test_user_models.py): a loss and an estimator in a file used from the command line with
nothing installed, a loss registered at run time accepted and listed, loss options from the
command line and the config file, entry points of every group, and one-line errors."""

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_crb import t2_closed_form_crb

import crbnet
from crbnet import sequences
from crbnet.cli import app as cli
from crbnet.estimators import protocol as estimator
from crbnet.learning import losses
from crbnet.learning.training_config import build_config

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--set", "data.batches_per_epoch=3", "--set", "data.batch_size=64",
        "--set", "data.val_size=64", "--set", "subspace.n_fit=256", "--set", "subspace.n_check=8",
        "--set", "net.width=16", "--set", "net.depth=1", "--no-progress"]

pytestmark = pytest.mark.usefixtures("one_thread")


def user_file(tmp_path: Path, example: str, name: str) -> Path:
    """A user's plugin file: a copy of a worked example under a name of the user's."""
    return Path(shutil.copy(ROOT / "examples" / example, tmp_path / name))


def run_crbnet(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """``python3 -m crbnet ...`` in ``cwd`` with crbnet on PYTHONPATH (nothing installed)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=str(Path(crbnet.__file__).resolve().parents[1]))
    return subprocess.run([sys.executable, "-m", "crbnet", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_a_loss_in_a_file_trains_resumes_and_reloads(tmp_path, monkeypatch):
    user_file(tmp_path, "relative_l1_loss.py", "my_loss.py")
    spec = "my_loss.py:relative_l1"
    done = run_crbnet(tmp_path, "train", "--model", "t2_decay", "--loss", spec,
                      "--loss-option", "floor=0.01", "--out", "run", "--epochs", "1", *TINY)
    assert done.returncode == 0, done.stderr
    payload = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["payload"]
    recorded = payload["training"]["config"]["loss"]
    assert recorded["name"] == spec and recorded["options"] == {"floor": 0.01}
    # The run names the loss by its spec, so it resumes (the same configuration, options
    # typed alike) and loads again from that folder.
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--model", "t2_decay", "--loss", spec, "--loss-option",
                     "floor=0.01", "--out", "run", "--epochs", "1", "--resume", *TINY]) == 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["loss"] == spec
    assert crbnet.load(tmp_path / "run").predict(
        crbnet.models.get("t2_decay").simulate(torch.tensor([[0.08]]).double())).shape == (1, 1)


def test_loss_options_reach_the_loss_from_the_command_line_and_the_config(tmp_path,
                                                                           monkeypatch):
    """With floor = 10⁶ every relative error is divided by 10⁶: the training loss shrinks by
    orders of magnitude against floor = 10⁻⁶ (the option reaches the loss's compute)."""
    user_file(tmp_path, "relative_l1_loss.py", "my_loss.py")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "huge.toml").write_text('[loss]\nname = "my_loss.py:relative_l1"\n'
                                        'options = {floor = 1e6}\n')
    args = ["train", "--model", "t2_decay", "--epochs", "1", "--seed", "2", *TINY]
    assert cli.main([*args, "--config", "huge.toml", "--out", "huge"]) == 0
    assert cli.main([*args, "--loss", "my_loss.py:relative_l1", "--loss-option", "floor=1e-6",
                     "--out", "tiny"]) == 0
    first = {run: float((tmp_path / run / "metrics.csv").read_text().splitlines()[1]
                        .split(",")[1]) for run in ("huge", "tiny")}
    assert 0 < first["huge"] < 1e-4 * first["tiny"]


def test_an_estimator_in_a_file_evaluates_from_the_command_line(tmp_path):
    user_file(tmp_path, "median_estimator.py", "my_est.py")
    done = run_crbnet(tmp_path, "evaluate", "--method", "my_est.py:Median", "--model",
                      "t2_decay", "--option", "k=3", "--out", "ev", "--grid", "3",
                      "--realizations", "4", "--snr", "100")
    assert done.returncode == 0, done.stderr
    doc = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert "T2" in doc["summary"]
    assert "my_est.py:Median" in done.stdout


def test_an_estimator_in_a_file_sits_beside_the_built_ins_in_compare(tmp_path, monkeypatch,
                                                                     capsys):
    user_file(tmp_path, "median_estimator.py", "my_est.py")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["compare", "--model", "ir_t1", "--voxels", "32", "--out", "cmp",
                     "my_est.py:Median", "nlls"]) == 0
    rows = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert "my_est.py:Median" in json.dumps(rows) and "nlls" in json.dumps(rows)


def test_a_loss_without_options_is_recorded_as_before():
    """Runs recorded before losses had options resume: a loss without options adds no key."""
    from crbnet.learning.training_config import TrainConfig

    assert "options" not in TrainConfig().to_dict()["loss"]
    config = build_config("t2_decay", overrides={"loss": {"name": "bias_reduced"}})
    assert "options" not in config.to_dict()["loss"] and config.loss.options == {}


def test_a_loss_registered_at_run_time_is_accepted_and_listed(capsys):
    @losses.register("halved_mse_test", "half the plain MSE")
    def _halved(x: losses.LossInputs) -> torch.Tensor:
        return 0.5 * losses.mse(x.estimate, x.target)

    try:
        config = build_config("t2_decay", overrides={"loss": {"name": "halved_mse_test"}})
        assert config.loss.name == "halved_mse_test"
        with pytest.raises(SystemExit):
            cli.main(["train", "--help"])
        assert "halved_mse_test" in " ".join(capsys.readouterr().out.split())
    finally:
        del losses.REGISTRY["halved_mse_test"]


@pytest.mark.parametrize("args, message", [
    (["--loss", "nope.py:relative_l1"], "not found"),
    (["--loss", "my_loss.py:absolute"], "no loss named 'absolute'"),
    (["--loss", "no_such_loss"], "unknown loss"),
    (["--loss", "my_loss.py:relative_l1", "--loss-option", "flor=1"], "declared: floor"),
    (["--loss", "my_loss.py:relative_l1", "--loss-option", "floor=big"], "expects float"),
    (["--loss", "crb", "--loss-option", "floor=1"], "no option(s) floor"),
])
def test_bad_losses_give_one_line(tmp_path, monkeypatch, capsys, args, message):
    user_file(tmp_path, "relative_l1_loss.py", "my_loss.py")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--model", "t2_decay", "--out", "run", *args, *TINY]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "run").exists()


def test_bad_estimator_specs_give_one_line(tmp_path, monkeypatch, capsys):
    user_file(tmp_path, "median_estimator.py", "my_est.py")
    monkeypatch.chdir(tmp_path)
    for spec, message in (("my_est.py:Mean", "no estimator named 'Mean'"),
                          ("no_such_method", "neither a method")):
        assert cli.main(["evaluate", "--method", spec, "--model", "t2_decay", "--out", "ev",
                         "--grid", "2"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err


def test_a_sequence_kind_in_a_file_loads_with_its_model(tmp_path, capsys, monkeypatch):
    """The kind and the model that plays it in one file: the model's sequence file loads
    for the file's kind, and the CRB is the closed form of a scaled mono-exponential."""
    monkeypatch.delitem(sequences.KINDS, "gre_echoes", raising=False)   # the user's copy's
    path = user_file(tmp_path, "gradient_echo_t2star.py", "gre.py")
    times = [0.004, 0.008, 0.016, 0.03]
    (tmp_path / "echoes.json").write_text(json.dumps({"TE": times, "flip": 0.3}))
    try:
        assert cli.main(["crb", "--model", f"{path}:T2StarDecay", "--sequence",
                         str(tmp_path / "echoes.json"), "--param", "T2s=0.03", "--json"]) == 0
        got = json.loads(capsys.readouterr().out)["crb"]["T2s"]
        expected = t2_closed_form_crb(np.array(times), 0.03, np.sin(0.3), 1.0)
        assert got == pytest.approx(expected, rel=1e-8)
        kind = sequences.kind_of(f"{path}:GradientEchoes")          # by spec, too
        assert kind.name == "gre_echoes" and kind.required == {"TE"}
    finally:
        sequences.KINDS.pop("gre_echoes", None)


PLUGIN_MODULE = '''
from dataclasses import dataclass, field
import torch

def doubled_mse(x):
    """twice the plain MSE"""
    return 2 * ((x.estimate - x.target) ** 2).mean()

class Constant:
    """the middle of each training range"""
    def __init__(self, model):
        self.model, self.name = model, "constant"
        self.parameters = tuple(model.parameters)
    def predict(self, signals):
        mid = [(lo + hi) / 2 for lo, hi in self.model.train_ranges.values()]
        return torch.tensor(mid, dtype=torch.float64).repeat(len(signals), 1)

@dataclass(frozen=True)
class Pulses:
    flips: list
    kind: str = field(default="pulses_test", init=False)
    @property
    def n_timepoints(self):
        return len(self.flips)
    def to_dict(self):
        return {"flips": list(self.flips)}
'''


def test_installed_plugins_of_every_group_are_found_and_listed(tmp_path, monkeypatch):
    (tmp_path / "plugin_pkg_test.py").write_text(PLUGIN_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    installed = {
        "crbnet.losses": [("doubled", "plugin_pkg_test:doubled_mse")],
        "crbnet.estimators": [("constant", "plugin_pkg_test:Constant")],
        "crbnet.sequences": [("pulses_test", "plugin_pkg_test:Pulses")],
    }
    points = {group: [importlib.metadata.EntryPoint(name=n, value=v, group=group)
                      for n, v in entries] for group, entries in installed.items()}
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group=None: points.get(group, []))
    try:
        assert "doubled" in losses.names()
        loss = losses.get("doubled")
        assert loss.name == "doubled" and loss.description == "twice the plain MSE"
        x = losses.LossInputs(torch.ones(2, 1), torch.zeros(2, 1), torch.ones(2, 1))
        assert float(loss.compute(x)) == 2.0
        assert "constant" in estimator.names(needs_checkpoint=False)
        model = crbnet.models.get("t2_decay")
        est = estimator.get("constant", model)
        assert est.predict(model.simulate(torch.tensor([[0.05]]).double())).shape == (1, 1)
        seq = sequences.from_dict({"flips": [0.1, 0.2]}, "pulses_test")
        assert seq.n_timepoints == 2 and sequences.kind_of("pulses_test").cls is type(seq)
    finally:
        sequences.KINDS.pop("pulses_test", None)


def test_a_broken_installed_plugin_breaks_only_its_own_use(monkeypatch, tmp_path, capsys):
    """Help texts name installed plugins without loading them; using a broken one is one
    line (exit 2), and the other commands keep working."""
    broken = {group: [importlib.metadata.EntryPoint(name="broken", value="no_such_module:x",
                                                    group=group)]
              for group in ("crbnet.models", "crbnet.losses", "crbnet.estimators",
                            "crbnet.sequences")}
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group=None: broken.get(group, []))
    with pytest.raises(SystemExit):
        cli.main(["compare", "--help"])
    assert "broken" in capsys.readouterr().out
    for args in (["train", "--model", "t2_decay", "--loss", "broken"],
                 ["evaluate", "--model", "t2_decay", "--method", "broken"],
                 ["crb", "--model", "broken"]):
        assert cli.main([*args, "--out", str(tmp_path / "x")] if args[0] != "crb" else args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "plugin" in err and "'broken' failed" in err
    assert cli.main(["crb", "--model", "t2_decay", "--param", "T2=0.05"]) == 0
