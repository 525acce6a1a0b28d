"""``files.write_json``: the one JSON writer — strict JSON from NaN, numpy, tensors and paths."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from crbnet import files


def _strict(text):
    def refuse(name):
        raise ValueError(f"non-standard constant {name}")
    return json.loads(text, parse_constant=refuse)


def test_values_become_plain_json():
    value = {
        "nan": math.nan, "inf": -math.inf, "f32": np.float32(0.5), "i64": np.int64(7),
        "flag": np.bool_(True), "array": np.array([[1.0, np.nan], [2.0, 3.0]]),
        "tensor": torch.tensor([1, 2]), "scalar_tensor": torch.tensor(2.5),
        "path": Path("/tmp/x.nii.gz"), "tuple": (1, "a"), "set": {3},
        "nested": [{"deep": np.float64(np.inf)}], 4: "int key", "none": None, "bool": False,
    }
    assert files.json_ready(value) == {
        "nan": None, "inf": None, "f32": 0.5, "i64": 7, "flag": True,
        "array": [[1.0, None], [2.0, 3.0]], "tensor": [1, 2], "scalar_tensor": 2.5,
        "path": "/tmp/x.nii.gz", "tuple": [1, "a"], "set": [3],
        "nested": [{"deep": None}], "4": "int key", "none": None, "bool": False,
    }
    assert type(files.json_ready(np.int64(7))) is int
    assert type(files.json_ready(np.float32(0.5))) is float


def test_write_json_is_strict_and_atomic(tmp_path):
    path = tmp_path / "out.json"
    files.write_json(path, {"sigma": np.float64(np.nan), "maps": [Path("a.nii.gz")]})
    assert _strict(path.read_text()) == {"sigma": None, "maps": ["a.nii.gz"]}
    assert path.read_text().endswith("\n")
    with pytest.raises(TypeError, match="not JSON serializable: object"):
        files.write_json(path, {"x": object()})
    # the failed write left the earlier file as it was and no temporary file
    assert _strict(path.read_text()) == {"sigma": None, "maps": ["a.nii.gz"]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
