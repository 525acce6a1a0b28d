"""The shipped in-vivo network (examples/invivo/network.pt): a safe, checked file for this
sequence and basis only, and a small crop of the shipped slice end to end through
``crbnet apply`` — the network, and NLLS started from it on a handful of voxels."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from crbnet import matfile, models
from crbnet.cli.app import main
from crbnet.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread")

SLICE = Path(__file__).resolve().parents[1] / "examples" / "invivo"
NETWORK = SLICE / "network.pt"
DATA = ["--input", None, "--basis", str(SLICE / "basis.mat"), "--basis-rank", "15"]


@pytest.fixture(scope="module")
def crop(tmp_path_factory):
    """A 5 × 5 crop in the middle of the slice as its own .mat file (x and mask)."""
    variables = matfile.variables(SLICE / "coeffs.mat")
    x, mask = variables["x"].read(), variables["mask"].read().astype(bool)
    box = (slice(86, 91), slice(70, 75))
    path = tmp_path_factory.mktemp("crop") / "crop.mat"
    matfile.write_v73(path, {"x": x[box], "mask": mask[box].astype(np.uint8)})
    assert mask[box].all()
    few = np.zeros((5, 5), np.uint8)
    few[1:3, 1:3] = 1                                  # NLLS: 4 voxels
    matfile.write_v73(path.parent / "few.mat", {"mask": few})
    return path


def data_args(path: Path) -> list[str]:
    return [str(path) if a is None else a for a in DATA]


def test_shipped_file_is_the_one_the_readme_names():
    digest = hashlib.sha256(NETWORK.read_bytes()).hexdigest()
    readme = (SLICE / "README.md").read_text()
    assert re.search(rf"\b{digest}\b", readme), "README.md lists the network's SHA-256"
    record = torch.load(NETWORK, map_location="cpu", weights_only=True)   # no code runs
    payload = record["payload"]
    assert payload["resume"] is None                  # weights only, no optimizer state
    assert payload["model"]["name"] == "mt_generalized_bloch"
    assert payload["training"]["config"]["loss"]["name"] == "bias_reduced"


def test_network_is_refused_for_another_sequence(tmp_path, capsys):
    from crbnet import estimators

    other = models.get("mt_generalized_bloch")            # its default sequence
    with pytest.raises(InputError, match="trained for"):
        estimators.get("network", other, checkpoint=str(NETWORK))
    code = main(["apply", *data_args(SLICE / "coeffs.mat"), "--model", "mt_generalized_bloch",
                 "--method", "nlls_network", "--option", f"checkpoint={NETWORK}",
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "sequence" in err[0]
    assert not (tmp_path / "o").exists()


def test_crop_end_to_end(crop, tmp_path):
    """Network maps of the crop, then NLLS from the network on 4 of its voxels: NLLS reaches
    a residual no larger than the network's in every voxel, and its estimates stay within a
    few √CRB of the network's (the network is near the optimum)."""
    net_dir, nlls_dir = tmp_path / "net", tmp_path / "nlls"
    assert main(["apply", "--checkpoint", str(NETWORK), *data_args(crop), "--noise", "residual",
                 "--no-uncertainty", "--out", str(net_dir)]) == 0
    assert main(["apply", *data_args(crop), "--model", "mt_generalized_bloch", "--sequence",
                 str(SLICE / "control.mat"), "--model-option", "TR=3.5e-3",
                 "--method", "nlls_network", "--option", f"checkpoint={NETWORK}",
                 "--option", "flip=omega0", "--noise", "residual", "--mask",
                 str(crop.parent / "few.mat"), "--out", str(nlls_dir)]) == 0

    def read(folder, name):
        return np.asarray(nib.load(folder / f"{name}.nii.gz").dataobj).astype(float)

    assert (read(net_dir, "mask") > 0).sum() == 25
    mask = read(nlls_dir, "mask") > 0
    assert mask.sum() == 4
    net_res, nlls_res = read(net_dir, "sigma_residual")[mask], read(nlls_dir, "sigma_residual")[mask]
    assert np.all(nlls_res <= net_res * (1 + 1e-6))
    summary = json.loads((net_dir / "apply.json").read_text())
    assert summary["goodness_of_fit"]["sigma_source"] == "residual"
    assert 0.5 < summary["goodness_of_fit"]["median"] < 2
    # Over the whole slice the network's median distance to NLLS is 0.2-0.8 sqrt(CRB) per
    # parameter, but B1 is more than 3 sqrt(CRB) off in 6 % of the voxels, and these four
    # (centre of the slice, omega0 ~150 rad/s) are among them: about 5 sqrt(CRB).
    for p, few in (("m0s", 3), ("T1f", 3), ("T2f", 3), ("TB1map", 8)):
        net, fit, std = (read(net_dir, p)[mask], read(nlls_dir, p)[mask],
                         read(nlls_dir, f"{p}_CRBstd")[mask])
        assert np.median(np.abs(net - fit) / std) < few, p
    m0s = read(nlls_dir, "m0s")[mask]
    assert 0.02 < np.median(m0s) < 0.35           # brain tissue, not a range edge


def test_demo_section_maps_the_slice(tmp_path):
    """The demo's in-vivo section: the figure it embeds exists, and the network's white matter
    (masks from its own m0s and T1f maps) is white matter as published for this model family
    (m0s ≈ 0.2, T1f ≈ 1.8–1.9 s) within wide margins."""
    from crbnet.reporting.invivo import network_maps, demo_section
    from crbnet.imaging.tissue_regions import region_statistics, tissue_masks

    lines = demo_section(tmp_path, log=lambda s: None)
    text = "\n".join(lines)
    assert "![in-vivo maps](invivo_maps.png)" in text and (tmp_path / "invivo_maps.png").is_file()
    assert "| m0s |" in text and "Assländer" in text
    maps, mask = network_maps(NETWORK)
    assert mask.sum() == 19213
    masks = tissue_masks(maps["m0s"], maps["T1f"], mask)
    wm = region_statistics(maps, masks)["WM"]
    assert wm["m0s"]["n"] > 1000
    assert 0.15 < wm["m0s"]["median"] < 0.3 and 1.4 < wm["T1f"]["median"] < 2.4


@pytest.mark.parametrize("options, message", [
    ({}, "checkpoint=PATH"),
    ({"checkpoint": "x.pt", "chunk_size": "abc"}, "chunk_size must be a whole number"),
    ({"checkpoint": "x.pt", "ftol": -1.0}, "ftol must be a number >= 0"),
])
def test_network_started_nlls_options_are_checked_before_loading(options, message):
    from crbnet.errors import InputError
    from crbnet.estimators.nlls_network_start import NetworkStartedNLLS

    with pytest.raises(InputError, match=message):
        NetworkStartedNLLS(None, **options)
