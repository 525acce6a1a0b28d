"""Bias-reduced loss against its formula computed directly, and fine-tuning with --init."""

import pytest
import torch

from crbnet.cli import app as cli
from crbnet.learning import losses

TINY = ["--set", "data.batches_per_epoch=3", "--set", "data.batch_size=64",
        "--set", "data.val_size=64", "--set", "subspace.n_fit=256", "--set", "subspace.n_check=0",
        "--set", "net.width=16", "--set", "net.depth=1", "--no-progress", "--epochs", "1"]


def test_bias_reduced_matches_direct_formula():
    """mean((μ−θ)²/CRB) + λ·mean(max(s²/CRB − δ, 0)), written out with loops."""
    g = torch.Generator().manual_seed(3)
    N, R, P = 5, 7, 3
    est = torch.randn(N, R, P, generator=g, dtype=torch.float64)
    truth = torch.randn(N, P, generator=g, dtype=torch.float64)
    crb = 0.2 + torch.rand(N, P, generator=g, dtype=torch.float64)
    lam, delta = 0.7, 0.6
    bias_sum, pen_sum = 0.0, 0.0
    for i in range(N):
        for p in range(P):
            xs = [float(est[i, r, p]) for r in range(R)]
            mu = sum(xs) / R
            s2 = sum((x - mu) ** 2 for x in xs) / (R - 1)
            bias_sum += (mu - float(truth[i, p])) ** 2 / float(crb[i, p])
            pen_sum += max(s2 / float(crb[i, p]) - delta, 0.0)
    expected = bias_sum / (N * P) + lam * pen_sum / (N * P)
    got = losses.bias_reduced(est, truth, crb, lam=lam, delta=delta).item()
    assert got == pytest.approx(expected, rel=1e-12)
    # δ large: no penalty at all
    assert losses.bias_reduced(est, truth, crb, lam=lam, delta=1e9).item() == pytest.approx(
        bias_sum / (N * P), rel=1e-12)


def test_init_fine_tunes_and_refuses_a_foreign_checkpoint(tmp_path, capsys):
    base = tmp_path / "crb"
    assert cli.main(["train", "--model", "t2_decay", "--out", str(base)] + TINY) == 0
    tuned = tmp_path / "bias"
    assert cli.main(["train", "--model", "t2_decay", "--out", str(tuned), "--init", str(base),
                     "--loss", "bias_reduced", "--set", "loss.realizations=16",
                     "--set", "loss.delta=1.0"] + TINY) == 0
    from crbnet.learning.checkpoint import read

    start = read(base / "checkpoint.pt")["network"]["state_dict"]
    after = read(tuned / "checkpoint.pt")
    assert after["training"]["summary"]["init"] == str(base)
    assert after["training"]["config"]["loss"]["realizations"] == 16
    # fine-tuning moved the weights a little from the starting network, not from scratch
    key = next(k for k, v in start.items() if k.endswith("weight") and v.ndim == 2)
    w0, w1 = start[key], after["network"]["state_dict"][key]
    assert 0 < (w1 - w0).norm() < 0.5 * w0.norm()
    capsys.readouterr()
    # a checkpoint of another model is refused with one line, exit 2, nothing written
    other = tmp_path / "other"
    rc = cli.main(["train", "--model", "ir_t1", "--out", str(other), "--init", str(base)] + TINY)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--init" in err and len(err.splitlines()) == 1
    assert not other.exists()
    # same model, another sequence (other echo times): refused likewise
    rc = cli.main(["train", "--model", "t2_decay", "--times", "0.01,0.02,0.04,0.08", "--out",
                   str(other), "--init", str(base)] + TINY)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "sequence" in err and len(err.splitlines()) == 1
    assert not other.exists()
    # same model, another architecture: refused too
    rc = cli.main(["train", "--model", "t2_decay", "--out", str(other), "--init", str(base)]
                  + TINY + ["--set", "net.width=8"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "network differs" in err and len(err.splitlines()) == 1


def test_init_refuses_another_input_basis(tmp_path, capsys):
    """A checkpoint trained without --basis cannot be fine-tuned with one (and the reverse):
    the CRBs of the loss would belong to another basis than the one the network reads."""
    base = tmp_path / "crb"
    assert cli.main(["train", "--model", "t2_decay", "--out", str(base)] + TINY) == 0
    basis = tmp_path / "u.npy"
    assert cli.main(["basis", "--model", "t2_decay", "--k", "3", "--out", str(basis)]) == 0
    capsys.readouterr()
    other = tmp_path / "other"
    rc = cli.main(["train", "--model", "t2_decay", "--basis", str(basis), "--out", str(other),
                   "--init", str(base)] + TINY)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--basis" in err and len(err.splitlines()) == 1
    assert not other.exists()
    # the reverse: trained in the user's basis, fine-tuned without it
    in_basis = tmp_path / "in_basis"
    assert cli.main(["train", "--model", "t2_decay", "--basis", str(basis), "--out",
                     str(in_basis)] + TINY) == 0
    capsys.readouterr()
    rc = cli.main(["train", "--model", "t2_decay", "--out", str(other), "--init", str(in_basis)]
                  + TINY)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--basis" in err and len(err.splitlines()) == 1
    # the same basis is accepted
    assert cli.main(["train", "--model", "t2_decay", "--basis", str(basis), "--out", str(other),
                     "--init", str(in_basis)] + TINY) == 0
