"""The trainer talks to its caller only through what it is given: progress bars (crbnet.progress),
a line callback (or logging), a figure callback; its record is what the run files hold; a resume
leaves torch's global RNG as the caller set it."""

from __future__ import annotations

import io
import json
import logging

import pytest
import torch

import crbnet
from crbnet.cli._progress import terminal_lines
from crbnet.errors import InputError
from crbnet.learning.checkpoint import read
from crbnet.learning.run_record import RunRecord
from crbnet.learning.trainer import Trainer
from crbnet.learning.training_config import build_config

TINY = {"data": {"batches_per_epoch": 3, "batch_size": 32, "val_size": 32},
        "subspace": {"n_fit": 64, "n_check": 4}, "net": {"width": 8, "depth": 1},
        "optim": {"epochs": 2}}


def test_bars_lines_and_figure_come_through_callbacks(tmp_path, capfd, progress_recorder):
    lines: list[str] = []
    drawn: list[tuple[int, str]] = []
    bars = progress_recorder

    def figure(record: RunRecord, path) -> None:
        assert isinstance(record, RunRecord)
        drawn.append((len(record.metrics), path.name))
        path.write_bytes(b"figure")

    model = crbnet.get_model("t2_decay")
    summary = Trainer(model, build_config(model, overrides=TINY), tmp_path / "run",
                      progress=bars, log=lines.append, loss_figure=figure).fit()
    out, err = capfd.readouterr()
    assert out == "" and err == ""                       # nothing printed by the library
    assert [b["desc"] for b in bars.bars] == ["epoch 1/2", "epoch 2/2"]
    assert all(b["done"] == b["total"] == 3 and b["closed"] for b in bars.bars)
    assert lines[0].startswith("crbnet train: t2_decay") and len(lines) == 3
    assert lines[1].startswith("epoch   1/2") and lines[2].startswith("epoch   2/2")
    assert drawn[-1] == (2, "loss.png")                  # the final epoch always draws
    assert (tmp_path / "run" / "loss.png").read_bytes() == b"figure"
    written = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert written["epochs"] == summary["epochs"] == 2
    assert written["network_parameters"] > 0 and written["device"] == "cpu"


def test_silent_by_default_logs_lines_and_draws_nothing(tmp_path, capfd, caplog, monkeypatch):
    # as in a program that has not configured logging (the CLI, run earlier in this process,
    # adds a handler to the crbnet logger)
    monkeypatch.setattr(logging.getLogger("crbnet"), "handlers", [])
    model = crbnet.get_model("t2_decay")
    with caplog.at_level(logging.INFO, logger="crbnet.learning.trainer"):
        Trainer(model, build_config(model, overrides=TINY), tmp_path / "run").fit()
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert sum(r.getMessage().startswith("epoch") for r in caplog.records) == 2
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "checkpoint.pt", "metrics.csv", "summary.json"]


def test_resume_leaves_the_global_rng_alone(tmp_path):
    model = crbnet.get_model("t2_decay")
    config = build_config(model, overrides=TINY)
    Trainer(model, config, tmp_path / "run", log=None).fit()
    torch.manual_seed(4321)
    expected = torch.rand(4)
    torch.manual_seed(4321)
    summary = Trainer(model, config, tmp_path / "run", resume=True, log=lambda _: None).fit()
    assert summary["epochs"] == 2
    torch.testing.assert_close(torch.rand(4), expected)
    payload = read(tmp_path / "run" / "checkpoint.pt")
    assert set(payload["resume"]["rng"]) == {"data"}     # the global state is not stored


def test_callbacks_must_be_callable(tmp_path):
    model = crbnet.get_model("t2_decay")
    config = build_config(model, overrides=TINY)
    for bad in ({"log": "stderr"}, {"progress": True}, {"loss_figure": "loss.png"}):
        with pytest.raises(InputError, match="must be a callable"):
            Trainer(model, config, tmp_path / "run", **bad)
    assert not (tmp_path / "run").exists()


def test_cli_lines_go_to_the_stderr_of_the_moment(monkeypatch):
    buffer = io.StringIO()
    monkeypatch.setattr("sys.stderr", buffer)
    terminal_lines("epoch   1/2  train 1.0")
    assert buffer.getvalue() == "epoch   1/2  train 1.0\n"
