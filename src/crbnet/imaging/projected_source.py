"""A time series read as its subspace coefficients: ``crbnet apply --basis`` on data that hold
the T time points rather than the K coefficient images."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from crbnet.imaging.signal_sources import SignalSource
from crbnet.physics.models.base import SignalModel


class ProjectedSource(SignalSource):
    """A time series source read as its coefficients in ``model``'s basis (``Uᴴ y`` per
    voxel, block by block)."""

    def __init__(self, source: SignalSource, model: Any) -> None:
        self._source, self._model = source, model
        self.spatial_shape = source.spatial_shape
        self.n_timepoints = model.n_coefficients
        self.affine, self.header = source.affine, source.header
        self.description = f"{source.description} projected on basis {model.basis_hash}"
        self.sidecar = source.sidecar
        self.itemsize = 16

    def block_size(self, max_bytes: int) -> int:
        return self._source.block_size(max_bytes)

    def read(self, block: tuple[slice, ...]) -> np.ndarray:
        data = self._source.read(block)
        flat = torch.from_numpy(np.ascontiguousarray(data.reshape(-1, data.shape[-1])))
        z = self._model.project(flat.to(torch.complex128)).numpy()
        return z.reshape(data.shape[:-1] + (z.shape[-1],))


def as_model_input(source: SignalSource, model: SignalModel) -> SignalSource:
    """``source`` as ``model`` reads it: a time series of T points is projected on the basis of
    a :class:`~crbnet.stats.projected.ProjectedModel`; anything else is returned as it is."""
    from crbnet.stats.projected import ProjectedModel

    if isinstance(model, ProjectedModel) and source.n_timepoints == model.base.n_timepoints \
            and source.n_timepoints != model.n_timepoints:
        return ProjectedSource(source, model)
    return source
