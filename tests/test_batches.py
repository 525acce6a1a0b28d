"""Training data: sampling spec, noise/M0/CRB scaling, online pool, HDF5 datasets, subspace."""

import math

import h5py
import numpy as np
import pytest
import torch

import crbnet
from crbnet.errors import InputError
from crbnet.learning import batches
from crbnet.stats import noise, sampling
from crbnet.learning.hdf5_dataset import Dataset, HDF5Source, check_compatible, write_dataset
from crbnet.stats.crb import crb as crb_fn
from crbnet.stats.subspace import choose_k, crb_inflation, fit_subspace


@pytest.fixture(scope="module")
def t2():
    return crbnet.get_model("t2_decay")


def test_sampler_from_spec(t2):
    s = sampling.sampler_from_spec(t2, {"T2": {"range": [0.02, 0.1], "distribution": "uniform"}})
    theta = s.sample(4000, torch.Generator().manual_seed(1))
    assert theta.min() >= 0.02 and theta.max() <= 0.1
    # uniform: the mean is the midpoint (log-uniform would put it at 0.0497)
    assert theta.mean().item() == pytest.approx(0.06, abs=0.002)
    assert s.spec_dict() == {"T2": {"range": [0.02, 0.1], "distribution": "uniform"}}
    with pytest.raises(InputError):
        sampling.sampler_from_spec(t2, {"T1": {"range": [0.1, 1]}})
    with pytest.raises(InputError):
        sampling.sampler_from_spec(t2, {"T2": {"range": [0.1]}})
    with pytest.raises(InputError):
        sampling.sampler_from_spec(t2, {"T2": {"rnage": [0.1, 0.2]}})


def test_snr_draws():
    g = torch.Generator().manual_seed(0)
    assert torch.all(noise.sample_snr(10, 30.0, g) == 30.0)
    s = noise.sample_snr(20000, [10, 100], g)
    assert s.min() >= 10 and s.max() <= 100
    # log-uniform: median at the geometric mean
    assert s.median().item() == pytest.approx(math.sqrt(1000), rel=0.03)
    for bad in (0, -1, [50, 10], [1, math.inf], "x"):
        with pytest.raises(InputError):
            noise.check_snr(bad)


def test_make_noisy_scales_noise_and_crb_with_m0(t2):
    n = 4000
    theta = torch.full((n, 1), 0.08, dtype=torch.float64)
    clean = batches.simulate_clean(t2, theta, basis=None, coefficient_dtype=torch.complex128)
    g = torch.Generator().manual_seed(3)
    noisy = batches.make_noisy(clean, 20.0, (0.5, 2.0), g)
    resid = noisy.signals - noisy.m0[:, None] * clean.coefficients
    sigma = noisy.m0.abs() / 20.0
    # per real/imaginary part, noise std is |M0|/SNR
    z = torch.view_as_real(resid / sigma[:, None])
    assert z.std().item() == pytest.approx(1.0, rel=0.02)
    # the CRB at the training noise level is crb_unit/SNR² whatever |M0|
    assert torch.allclose(noisy.crb, clean.crb / 400.0)
    expected = crb_fn(t2, theta[:1], sigma=float(sigma[0]), m0=noisy.m0[0])
    assert noisy.crb[0, 0].item() == pytest.approx(expected[0, 0].item(), rel=1e-10)
    # phases cover the circle, magnitudes the range
    assert noisy.m0.abs().min() >= 0.5 and noisy.m0.abs().max() <= 2.0
    assert torch.angle(noisy.m0).std().item() > 1.5


def test_make_noisy_repeats_share_m0_not_noise(t2):
    theta = torch.tensor([[0.05], [0.2]], dtype=torch.float64)
    clean = batches.simulate_clean(t2, theta)
    noisy = batches.make_noisy(clean, 30.0, (1.0, 2.0), torch.Generator().manual_seed(0), repeats=4)
    assert noisy.signals.shape == (8, t2.n_timepoints)
    assert torch.equal(noisy.theta[:4], theta[:1].expand(4, 1))
    assert torch.all(noisy.m0[:4] == noisy.m0[0]) and noisy.m0[0] != noisy.m0[4]
    assert not torch.allclose(noisy.signals[0], noisy.signals[1])


def test_online_pool_rebuild_equals_sequential_refresh(t2):
    """The pool at epoch e can be rebuilt directly — what --resume relies on."""
    s = sampling.sampler_from_spec(t2, {})
    kwargs = dict(batch_size=8, batches_per_epoch=2, pool_size=10, pool_refresh=4, seed=5)
    seq = batches.OnlineSource(t2, s, None, **kwargs)
    for epoch in range(6):
        seq.start_epoch(epoch)
    direct = batches.OnlineSource(t2, s, None, **kwargs)
    direct.start_epoch(5)
    assert torch.equal(seq.pool.theta, direct.pool.theta)
    first = batches.OnlineSource(t2, s, None, **kwargs)
    first.start_epoch(0)
    assert len(first.pool) == 10
    # blocks 4, 4, 2 have been replaced twice / twice / once by epoch 5: all different
    assert not torch.isin(seq.pool.theta, first.pool.theta).any()
    other_rank = batches.OnlineSource(t2, s, None, rank=1, **{k: v for k, v in kwargs.items()})
    other_rank.start_epoch(0)
    assert not torch.equal(other_rank.pool.theta, first.pool.theta)


def test_fresh_online_batches_have_crbs(t2):
    s = sampling.sampler_from_spec(t2, {})
    src = batches.OnlineSource(t2, s, None, batch_size=16, batches_per_epoch=3, pool_size=0)
    drawn = list(src.batches(0, torch.Generator().manual_seed(0)))
    assert len(drawn) == 3
    b = drawn[0]
    assert torch.allclose(b.crb, crb_fn(t2, b.theta), rtol=1e-12)
    assert not torch.equal(drawn[0].theta, drawn[1].theta)


def test_subspace_and_crb_inflation(t2):
    theta = sampling.sampler_from_spec(t2, {}).sample(500, torch.Generator().manual_seed(0))
    signals = t2.simulate(theta)
    sub = fit_subspace(signals, energy=0.999999)
    U = sub.basis
    assert torch.allclose(U.mH @ U, torch.eye(sub.k, dtype=U.dtype), atol=1e-12)
    assert sub.energy >= 0.999999 and sub.k == choose_k(sub.singular_values, 0.999999)
    assert sub.k < t2.n_timepoints
    small = sub.truncate(2)
    ratios_small = crb_inflation(t2, theta[:50], small.basis)
    ratios_big = crb_inflation(t2, theta[:50], sub.basis)
    # compression cannot lower the bound; more vectors lose less
    assert ratios_small["T2"] > ratios_big["T2"] >= 1 - 1e-9
    assert ratios_big["T2"] < 1.01
    full = fit_subspace(signals, k=t2.n_timepoints)
    assert crb_inflation(t2, theta[:20], full.basis)["T2"] == pytest.approx(1.0, abs=1e-9)
    with pytest.raises(InputError):
        fit_subspace(signals, k=0)


@pytest.mark.parametrize("storage", ["coefficients", "signals"])
def test_hdf5_dataset_roundtrip(t2, tmp_path, storage):
    path = tmp_path / "d.h5"
    s = sampling.sampler_from_spec(t2, {})
    info = write_dataset(path, t2, s, n=300, seed=4, storage=storage, chunk_rows=64, n_fit=200)
    assert [p.name for p in tmp_path.iterdir()] == ["d.h5"]  # no temporary left behind
    ds = Dataset(path)
    assert ds.n == 300 and ds.storage == storage
    check_compatible(ds, t2)
    rows = ds.read(100, 140)
    # stored values are the physics of the stored parameters
    assert torch.allclose(rows.crb, crb_fn(t2, rows.theta), rtol=1e-12)
    f = t2.simulate(rows.theta)
    expected = f if storage == "signals" else f @ ds.subspace.basis.conj()
    assert torch.allclose(rows.coefficients.to(torch.complex128), expected, atol=1e-6)
    if storage == "coefficients":
        assert info["k"] == ds.width < t2.n_timepoints
    # the same seed gives the same file content
    write_dataset(tmp_path / "e.h5", t2, s, n=300, seed=4, storage=storage, chunk_rows=64,
                  n_fit=200)
    with h5py.File(path) as a, h5py.File(tmp_path / "e.h5") as b:
        assert np.array_equal(a["theta"][()], b["theta"][()])


def test_hdf5_stream_ranks_disjoint_and_balanced(t2, tmp_path):
    path = tmp_path / "d.h5"
    write_dataset(path, t2, sampling.sampler_from_spec(t2, {}), n=1000, seed=0, chunk_rows=128,
                  n_fit=100)
    ds = Dataset(path)
    seen = []
    counts = []
    for rank in range(2):
        src = HDF5Source(ds, 0, 900, batch_size=50, block_rows=100, blocks_in_memory=2,
                         seed=1, rank=rank, world=2)
        batches = list(src.batches(0, torch.Generator().manual_seed(rank)))
        counts.append(len(batches))
        seen.append(torch.cat([b.theta for b in batches]))
    assert counts[0] == counts[1] == src.batches_per_epoch >= 8
    a, b = seen
    assert not torch.isin(a, b).any()               # ranks see different rows
    assert torch.unique(a).numel() == a.numel()     # no row twice in an epoch
    held_out = ds.read(900, 1000).theta
    assert not torch.isin(torch.cat(seen), held_out).any()
    # a new epoch reshuffles
    src0 = HDF5Source(ds, 0, 900, batch_size=50, block_rows=100, seed=1)
    e0 = next(iter(src0.batches(0, torch.Generator().manual_seed(0)))).theta
    e1 = next(iter(src0.batches(1, torch.Generator().manual_seed(0)))).theta
    assert not torch.equal(e0, e1)


def test_dataset_refuses_foreign_files(t2, tmp_path):
    foreign = tmp_path / "x.h5"
    with h5py.File(foreign, "w") as f:
        f["theta"] = np.zeros((3, 1))
    with pytest.raises(InputError, match="not a crbnet dataset"):
        Dataset(foreign)
    (tmp_path / "y.h5").write_bytes(b"not hdf5")
    with pytest.raises(InputError):
        Dataset(tmp_path / "y.h5")
    path = tmp_path / "d.h5"
    write_dataset(path, t2, sampling.sampler_from_spec(t2, {}), n=10, n_fit=10)
    with pytest.raises(InputError, match="different model"):
        check_compatible(Dataset(path), crbnet.get_model("ir_t1"))
