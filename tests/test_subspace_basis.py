"""A user's basis end to end: loading and orthonormality check, subspace CRB (finite
differences, complete basis = time domain), networks refusing another basis, and maps from
coefficient images equal to those from the time series expanded from them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import crbnet
from crbnet import models
from crbnet.cli.app import main
from crbnet.errors import InputError
from crbnet.estimators import DictionaryEstimator
from crbnet.imaging.apply import apply_to_volume
from crbnet.imaging.nifti import ArraySignals
from crbnet.imaging.phantom import make_phantom
from crbnet.stats.crb import crb
from crbnet.stats.projected import ProjectedModel
from crbnet.stats.sampling import ParameterSampler
from crbnet.stats.subspace import basis_hash, fit_subspace, load_basis
from crbnet.learning.trainer import Trainer
from crbnet.learning.training_config import build_config

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"data": {"batches_per_epoch": 5, "batch_size": 64, "val_size": 64},
        "subspace": {"n_fit": 256, "n_check": 8},
        "net": {"width": 16, "depth": 1}, "optim": {"epochs": 1}}


def svd_basis(model, k: int, seed: int = 0) -> torch.Tensor:
    theta = ParameterSampler(model).sample(512, torch.Generator().manual_seed(seed))
    return fit_subspace(model.simulate(theta), k=k).basis


def random_unitary(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.complex(torch.randn(n, n, generator=g, dtype=torch.float64),
                      torch.randn(n, n, generator=g, dtype=torch.float64))
    return torch.linalg.qr(a)[0]


@pytest.fixture(scope="module")
def t2():
    return models.get("t2_decay")


@pytest.fixture(scope="module")
def basis(t2):
    return svd_basis(t2, 4)


# ---- loading and checking ------------------------------------------------------------------
def test_every_file_format_loads_the_same_basis(basis, tmp_path):
    import h5py
    import scipy.io

    np.save(tmp_path / "u.npy", basis.numpy())
    scipy.io.savemat(tmp_path / "u.mat", {"U": basis.numpy()})
    with h5py.File(tmp_path / "u.h5", "w") as f:
        f["basis"] = basis.numpy()
    for name in ("u.npy", "u.mat", "u.h5"):
        loaded = load_basis(tmp_path / name, n_timepoints=32)
        assert torch.equal(loaded, basis), name
        assert basis_hash(loaded) == basis_hash(basis)


def test_non_orthonormal_basis_is_one_line_exit_2(basis, tmp_path, capsys):
    bad = basis.numpy().copy()
    bad[:, 1] *= 1 + 1e-5                    # a column norm 1e-5 off: above the 1e-6 tolerance
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(InputError, match="not orthonormal"):
        load_basis(tmp_path / "bad.npy")
    assert main(["crb", "--model", "t2_decay", "--basis", str(tmp_path / "bad.npy")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not orthonormal" in err[0]
    slightly = basis.numpy().copy()
    slightly[:, 1] *= 1 + 1e-8               # within tolerance: accepted
    np.save(tmp_path / "ok.npy", slightly)
    load_basis(tmp_path / "ok.npy")
    np.save(tmp_path / "short.npy", basis.numpy()[:20])
    with pytest.raises(InputError):          # rows are not orthonormal-complete: refused too
        load_basis(tmp_path / "short.npy", n_timepoints=32)


def test_basis_with_other_time_points_is_refused(basis, tmp_path):
    np.save(tmp_path / "u.npy", basis.numpy())
    assert main(["crb", "--model", "ir_t1", "--basis", str(tmp_path / "u.npy")]) == 2


# ---- statistics in the subspace --------------------------------------------------------------
@pytest.mark.parametrize("name", ["fisp_mrf", "t2_decay"])
def test_subspace_crb_matches_finite_differences(name):
    model = models.get(name)
    U = svd_basis(model, 6 if name == "fisp_mrf" else 3)
    pm = ProjectedModel(model, U)
    theta = model.theta_from_dict({}, fill_defaults=True)
    theta = torch.cat([theta, theta * 1.7])
    h = 1e-5 * theta
    cols = []
    for j in range(model.n_parameters):
        step = torch.zeros_like(theta)
        step[:, j] = h[:, j]
        cols.append((pm.simulate(theta + step) - pm.simulate(theta - step)) / (2 * h[:, j:j + 1]))
    f = pm.simulate(theta)
    J = torch.stack(cols + [f, 1j * f], -1)                 # [N, K, P+2] incl. complex M0
    F = (J.mH @ J).real
    reference = torch.diagonal(torch.linalg.inv(F), dim1=-2, dim2=-1)[:, :model.n_parameters]
    bound = crb(pm, theta)
    assert torch.allclose(bound, reference, rtol=1e-4, atol=0)
    assert torch.allclose(crb(model, theta, basis=U), bound, rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", ["fisp_mrf", "t2_decay"])
def test_complete_basis_gives_the_time_domain_crb(name):
    model = models.get(name)
    pm = ProjectedModel(model, random_unitary(model.n_timepoints, seed=3))
    theta = ParameterSampler(model).sample(8, torch.Generator().manual_seed(1))
    assert torch.allclose(crb(pm, theta), crb(model, theta), rtol=1e-10, atol=0)


# ---- networks in a basis -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def net_run(t2, basis, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    Trainer(t2, build_config("t2_decay", overrides=TINY), out, log=None,
            basis=basis).fit()
    return out


def test_checkpoint_records_the_basis_and_refuses_another(net_run, basis, t2):
    net = crbnet.load(net_run)
    record = net.info["subspace"]["basis"]
    assert record == {"hash": basis_hash(basis), "shape": [32, 4]}
    assert torch.equal(net.basis, basis)
    with pytest.raises(InputError, match="not the basis"):
        net.in_basis(svd_basis(t2, 4, seed=9) @ random_unitary(4, seed=2))
    coef_net = net.in_basis(basis)
    z = ProjectedModel(t2, basis).simulate(torch.tensor([[0.05], [0.2]], dtype=torch.float64))
    z = z * (3 - 2j)
    from_coefficients = coef_net.predict(z)
    from_time_series = net.predict(z @ basis.T)
    assert torch.allclose(from_coefficients, from_time_series, rtol=1e-5, atol=0)


# ---- maps ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def coefficient_phantom(t2, basis):
    return make_phantom(ProjectedModel(t2, basis), (24, 24), snr=200, seed=5)


def test_coefficient_maps_equal_expanded_time_series_maps(coefficient_phantom, basis, net_run,
                                                          tmp_path):
    ph = coefficient_phantom
    assert ph.signal.shape[-1] == 4
    expanded = (ph.signal.astype(np.complex128) @ basis.numpy().T).astype(np.complex64)
    pm = ph.model
    first = {}
    for label, estimator in (("plain", DictionaryEstimator(pm, progress=False, refine=False)),
                             ("dictionary", DictionaryEstimator(pm, progress=False)),
                             ("network", crbnet.load(net_run).in_basis(basis))):
        runs = [apply_to_volume(estimator, ArraySignals(data, ph.affine),
                                tmp_path / f"{label}-{i}", mask=ph.mask, progress=False)
                for i, data in enumerate((ph.signal, expanded))]
        a, b = (r.maps for r in runs)
        if label != "network":
            # apply.json says which kind of matching made the maps.
            expected = "refine=False" if label == "plain" else "refine=True"
            assert expected in runs[0].summary["estimator_settings"]
        if label == "plain":
            # Grid atoms: the same atom in both, so the very same numbers.
            assert np.array_equal(a["T2map"], b["T2map"])
        else:
            # Continuous estimates (refined between atoms, or a network): the projection's
            # round-off, nothing more.
            assert np.allclose(a["T2map"], b["T2map"], rtol=1e-5, atol=0)
        assert np.allclose(a["T2map_CRBstd"], b["T2map_CRBstd"], rtol=1e-3)
        assert runs[0].summary["basis"]["hash"] == basis_hash(basis)
        first[label] = a["T2map"][ph.mask]
    # Within 5 % of the truth (median over the brain) for the dictionary; the one-epoch
    # network of this test is not trained enough to ask that of it (the benchmark does).
    truth = ph.truth["T2"][ph.mask]
    assert np.median(np.abs(first["dictionary"] / truth - 1)) < 0.05


def test_cli_coefficient_workflow_and_refusals(tmp_path, capsys):
    b = tmp_path / "basis.mat"
    assert main(["basis", "--model", "t2_decay", "--k", "4", "--n", "512", "--n-check", "8",
                 "--out", str(b)]) == 0
    out = capsys.readouterr().out
    assert "energy kept" in out and "CRB inflation" in out
    assert main(["phantom", "--model", "t2_decay", "--shape", "20x20", "--snr", "100",
                 "--basis", str(b), "--out", str(tmp_path / "ph")]) == 0
    side = json.loads((tmp_path / "ph" / "signal.json").read_text())
    assert side["Basis"]["shape"] == [32, 4]
    common = ["apply", "--method", "dictionary", "--model", "t2_decay", "--no-uncertainty",
              "--input", str(tmp_path / "ph" / "signal.nii.gz")]
    capsys.readouterr()
    assert main(common + ["--out", str(tmp_path / "no-basis")]) == 2
    assert "give that basis with --basis" in capsys.readouterr().err
    other = tmp_path / "other.npy"
    np.save(other, (load_basis(b) @ random_unitary(4, seed=4)).numpy())
    assert main(common + ["--basis", str(other), "--out", str(tmp_path / "other")]) == 2
    assert "another basis" in capsys.readouterr().err
    assert not (tmp_path / "other").exists() and not (tmp_path / "no-basis").exists()
    assert main(common + ["--basis", str(b), "--out", str(tmp_path / "maps")]) == 0
    summary = json.loads((tmp_path / "maps" / "apply.json").read_text())
    assert summary["n_timepoints"] == 4
    assert summary["noise"]["residual_dof"] == 2 * 4 - 1 - 2
    flags = np.asarray(__import__("nibabel").load(str(tmp_path / "maps" / "flags.nii.gz")).dataobj)
    assert flags.sum() == summary["voxels"]["at_range_edge"]["T2"]


def test_edge_flags_mark_estimates_at_the_range_ends(t2):
    from crbnet.imaging.apply import edge_flags

    theta = np.array([[0.01], [0.0102], [0.08], [2.49], [3.0]])
    flags = edge_flags(theta, t2, {"T2": (0.01, 2.5)})[:, 0]
    assert flags.tolist() == [True, True, False, True, True]


def test_cli_offline_training_fit_and_compare_in_a_basis(tmp_path, capsys):
    b = tmp_path / "basis.npy"
    assert main(["basis", "--model", "t2_decay", "--k", "4", "--n", "256", "--n-check", "0",
                 "--out", str(b)]) == 0
    data = tmp_path / "d.h5"
    assert main(["dataset", "--model", "t2_decay", "--n", "160", "--basis", str(b),
                 "--out", str(data)]) == 0
    small = ["--epochs", "1", "--set", "data.batch_size=32", "--set", "data.val_size=32",
             "--set", "net.width=8", "--set", "net.depth=1", "--no-progress"]
    capsys.readouterr()
    assert main(["train", "--model", "t2_decay", "--dataset", str(data), "--out",
                 str(tmp_path / "nobasis")] + small) == 2
    assert "same --basis" in capsys.readouterr().err
    run = tmp_path / "run"
    assert main(["train", "--model", "t2_decay", "--dataset", str(data), "--basis", str(b),
                 "--out", str(run)] + small) == 0
    basis = load_basis(b)
    assert crbnet.load(run).info["subspace"]["basis"]["hash"] == basis_hash(basis)
    model = models.get("t2_decay")
    truth = torch.tensor([[0.04], [0.2]], dtype=torch.float64)
    z = ProjectedModel(model, basis).simulate(truth) * (1 - 2j)
    np.save(tmp_path / "z.npy", z.numpy())
    assert main(["fit", "--method", "nlls", "--model", "t2_decay", "--basis", str(b),
                 "--input", str(tmp_path / "z.npy"), "--out", str(tmp_path / "e.npy")]) == 0
    assert np.allclose(np.load(tmp_path / "e.npy"), truth.numpy(), rtol=1e-6)
    assert main(["compare", str(run), "dictionary", "--basis", str(b), "--voxels", "20",
                 "--out", str(tmp_path / "cmp")]) == 0
