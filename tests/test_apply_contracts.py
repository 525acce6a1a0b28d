"""``apply_to_volume`` returns data and draws nothing: progress through the caller's factory,
``maps.png`` through the caller's figure writer; the estimators' bars likewise."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch

import crbnet
from crbnet import models
from crbnet.errors import InputError
from crbnet.estimators.dictionary import DictionaryEstimator
from crbnet.estimators.nlls import NLLSEstimator
from crbnet.imaging.apply import apply_to_volume
from crbnet.imaging.nifti import ArraySignals
from crbnet.imaging.phantom import make_phantom

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def phantom():
    return make_phantom("t2_decay", (12, 12), snr=100, seed=5)


@pytest.fixture(scope="module")
def dictionary(phantom):
    return DictionaryEstimator(phantom.model, n_points=60).build()


def test_progress_goes_to_the_callers_factory(phantom, dictionary, tmp_path, progress_recorder):
    bars = progress_recorder
    run = apply_to_volume(dictionary, ArraySignals(phantom.signal), tmp_path / "auto",
                          progress=bars, uncertainty=False)
    survey, = bars.by_desc("survey")
    assert survey["total"] == phantom.signal[..., 0].size == survey["done"]
    estimate, = bars.by_desc("dictionary")
    assert estimate["total"] == run.mask.sum() == estimate["done"]
    assert all(b["closed"] for b in bars.bars)


def test_figure_comes_from_the_callers_writer(phantom, dictionary, tmp_path):
    calls = []

    def writer(result, path):
        calls.append((result, Path(path)))
        Path(path).write_bytes(b"figure")

    out = tmp_path / "maps"
    run = apply_to_volume(dictionary, ArraySignals(phantom.signal), out, mask=phantom.mask,
                          figure=writer, uncertainty=False)
    (result, path), = calls
    assert result is run and result.map_names == {"T2": "T2map"}
    assert path.name == "maps.png" and path.parent != out       # drawn before the rename
    assert (out / "maps.png").read_bytes() == b"figure"
    assert "maps.png" in run.summary["files"]
    # without a writer (the library default) there is no figure, and none is listed
    bare = apply_to_volume(dictionary, ArraySignals(phantom.signal), tmp_path / "bare",
                           mask=phantom.mask, uncertainty=False)
    assert not (tmp_path / "bare" / "maps.png").exists()
    assert "maps.png" not in bare.summary["files"]
    with pytest.raises(InputError, match="figure must be a function"):
        apply_to_volume(dictionary, ArraySignals(phantom.signal), tmp_path / "true",
                        mask=phantom.mask, figure=True)
    assert not (tmp_path / "true").exists()


def test_estimators_report_through_the_factory(progress_recorder):
    model = models.get("t2_decay")
    bars = progress_recorder
    dictionary = DictionaryEstimator(model, n_points=40, simulate_chunk=16, progress=bars)
    dictionary.build()
    built, = bars.by_desc("dictionary")
    assert built["total"] == 2 * 40 == built["done"]              # two passes over 40 atoms
    nlls = NLLSEstimator(model, chunk_size=3, start_points=16, progress=bars)
    signals = model.simulate(torch.full((7, 1), 0.08, dtype=torch.float64))
    nlls.fit(signals)
    fitted, = bars.by_desc("nlls")
    assert fitted["total"] == math.ceil(7 / 3) == fitted["done"]
    # the old switch (a bool) still works: True draws tqdm bars, False nothing
    NLLSEstimator(model, chunk_size=3, start_points=16, progress=True).fit(signals)
    assert len(bars.by_desc("nlls")) == 1


LIBRARY = Path(crbnet.__file__).parent
APPLY_MODULES = sorted(p for p in (LIBRARY / "imaging").glob("*.py") if p.name != "phantom.py") \
    + sorted((LIBRARY / "estimators").glob("*.py"))


@pytest.mark.parametrize("path", APPLY_MODULES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_apply_and_estimators_neither_draw_nor_print(path):
    tree = ast.parse(path.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
            pytest.fail(f"{path.name} prints")
    drawing = {m for m in imported
               if m.split(".")[0] in ("tqdm", "matplotlib") or m.startswith("crbnet.plots")}
    assert not drawing, f"{path.name} imports {sorted(drawing)}"
