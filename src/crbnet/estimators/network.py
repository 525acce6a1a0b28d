"""The trained network as an estimator: ``crbnet.load(path)`` and the registry's ``network``.

A checkpoint (:mod:`crbnet.learning.checkpoint`) becomes a :class:`NetworkEstimator` that maps
complex signals to parameters like every other estimator; a network trained on subspace
coefficients of a user's basis reads coefficients in that basis only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from crbnet.errors import InputError
from crbnet.estimators.protocol import as_signal_tensor, register_estimator
from crbnet.learning.checkpoint import CheckpointError, basis_from_real, model_from_dict, read
from crbnet.physics import sequences
from crbnet.physics.models import same_model
from crbnet.physics.models.base import SignalModel
from crbnet.stats.subspace import project


class NetworkEstimator:
    """A trained network as an :class:`~crbnet.estimators.protocol.Estimator`.

    Attributes:
        model: the signal model it was trained for (sequence and fixed parameters included).
        name: short label, ``"net-<loss>"``.
        parameters: estimated parameter names (columns of :meth:`predict`).
        basis: [T, k] subspace (complex128) or None.
        network: the :class:`~crbnet.learning.nets.ParameterNet` (eval mode).
        info: the checkpoint payload without weights and resume state (config, metrics...).
        device: where :meth:`predict` computes.
    """

    def __init__(self, model: SignalModel, network: torch.nn.Module, basis: torch.Tensor | None,
                 name: str = "net", info: Mapping[str, Any] | None = None,
                 device: torch.device | str | None = None, batch_size: int = 65536) -> None:
        self.model = model
        self.name = name
        self.info = dict(info or {})
        self.batch_size = int(batch_size)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.network = network.to(self.device).eval()
        self.basis = None if basis is None else basis.to(torch.complex128)

    @property
    def parameters(self) -> tuple[str, ...]:
        return tuple(self.model.parameters)

    def to(self, device: torch.device | str) -> "NetworkEstimator":
        self.device = torch.device(device)
        self.network.to(self.device)
        return self

    @torch.no_grad()
    def predict(self, signals: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Parameters [N, P] (SI, float64, CPU) from complex signals [N, T] (full time series,
        any complex M0). Projection and normalization are applied here."""
        # The network works in single precision, so the projection does too: its round-off
        # (~1e-7 relative) is far below any measurement noise, and it halves the memory
        # traffic of the step that dominates inference.
        y = as_signal_tensor(signals, self.model.n_timepoints, dtype=None,
                             device=torch.device("cpu"))
        out = []
        basis = None if self.basis is None else self.basis.to(self.device, torch.complex64)
        # On the CPU, blocks of a few thousand voxels keep the conversion and projection in
        # cache (1.6x faster than one large block).
        block = self.batch_size if self.device.type != "cpu" else min(self.batch_size, 4096)
        for start in range(0, y.shape[0], block):
            chunk = y[start:start + block].to(self.device, torch.complex64)
            z = project(chunk, basis)
            out.append(self.network(z).to(torch.float64).cpu())
        if not out:
            return torch.zeros(0, len(self.parameters), dtype=torch.float64)
        return torch.cat(out)

    def __repr__(self) -> str:
        return (f"NetworkEstimator(model={self.model.name!r}, parameters={list(self.parameters)}, "
                f"name={self.name!r})")

    @property
    def basis_hash(self) -> str | None:
        """Identity of the basis the network reads (:func:`crbnet.stats.subspace.basis_hash`)."""
        from crbnet.stats.subspace import basis_hash

        return None if self.basis is None else basis_hash(self.basis)

    def in_basis(self, basis: torch.Tensor) -> "CoefficientNetworkEstimator":
        """This network reading subspace coefficients ``Uᴴ y`` directly (no projection), for
        coefficients in ``basis`` — which must be the basis the network was trained in."""
        from crbnet.stats.subspace import basis_hash

        given = basis_hash(basis)
        if self.basis is None:
            raise InputError(f"the network was trained on full time series, not on subspace "
                             f"coefficients: it cannot read coefficients in basis {given}")
        if given != self.basis_hash:
            raise InputError(f"the input's basis {given} {list(basis.shape)} is not the basis "
                             f"the network was trained in ({self.basis_hash} "
                             f"{list(self.basis.shape)})")
        return CoefficientNetworkEstimator(self)


class CoefficientNetworkEstimator:
    """A :class:`NetworkEstimator` whose inputs are the coefficients [N, K] in its own basis;
    its ``model`` is the :class:`~crbnet.stats.projected.ProjectedModel` of that basis."""

    def __init__(self, network: NetworkEstimator) -> None:
        from crbnet.stats.projected import ProjectedModel

        self.network_estimator = network
        self.model = ProjectedModel(network.model, network.basis)
        self.name = network.name
        self.info = network.info

    @property
    def parameters(self) -> tuple[str, ...]:
        return tuple(self.model.parameters)

    @torch.no_grad()
    def predict(self, signals: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Parameters [N, P] (SI, float64, CPU) from coefficients [N, K] (any complex M0)."""
        net = self.network_estimator
        z = as_signal_tensor(signals, self.model.n_timepoints, dtype=None,
                             device=torch.device("cpu"))
        block = net.batch_size if net.device.type != "cpu" else min(net.batch_size, 4096)
        out = [net.network(z[s:s + block].to(net.device, torch.complex64)).to(torch.float64).cpu()
               for s in range(0, z.shape[0], block)]
        return torch.cat(out) if out else torch.zeros(0, len(self.parameters),
                                                      dtype=torch.float64)

    def __repr__(self) -> str:
        return f"CoefficientNetworkEstimator({self.network_estimator!r}, basis {self.model.basis_hash})"


def estimator_from_payload(payload: Mapping[str, Any], device: torch.device | str | None = None,
                           source: str = "checkpoint") -> NetworkEstimator:
    from crbnet.learning.nets import ParameterNet

    try:
        model = model_from_dict(payload["model"])
        net_record = payload["network"]
        network = ParameterNet.from_description(net_record["description"])
        network.load_state_dict(net_record["state_dict"])
        basis = basis_from_real(payload["basis"])
        loss = payload["training"]["config"]["loss"]["name"]
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{source}: malformed checkpoint content "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from None
    if basis is not None and basis.shape != (model.n_timepoints, network.n_coefficients):
        raise CheckpointError(f"{source}: basis shape {list(basis.shape)} does not match the "
                              f"sequence ({model.n_timepoints} time points) and the network "
                              f"({network.n_coefficients} inputs)")
    recorded = (payload.get("subspace") or {}).get("basis")
    if basis is not None and isinstance(recorded, Mapping):
        from crbnet.stats.subspace import basis_hash

        if recorded.get("hash") != basis_hash(basis):
            raise CheckpointError(f"{source}: the stored basis does not match its recorded hash")
    info = {k: v for k, v in payload.items() if k not in ("network", "resume", "basis")}
    return NetworkEstimator(model, network, basis, name=f"net-{loss}", info=info, device=device)


def load(path: str | Path, device: torch.device | str | None = None) -> NetworkEstimator:
    """Load a trained network from ``path`` (a checkpoint file or a run directory holding
    ``checkpoint.pt``) as an estimator: ``crbnet.load(path).predict(signals) -> [N, P]``.

    Raises :class:`InputError` (:class:`CheckpointError`) for a missing, foreign or tampered
    file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if device is not None:
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise InputError("device cuda requested but CUDA is not available")
    return estimator_from_payload(read(path), device=device, source=str(path))


@register_estimator("network", "a trained network (option checkpoint: a checkpoint file or run "
                               "directory from crbnet train)", needs_checkpoint=True)
def network_estimator(model: SignalModel | None, checkpoint: str | Path,
                      device: torch.device | str | None = None) -> NetworkEstimator:
    """The estimator registry's ``network``: the trained network in ``checkpoint``, refused
    when it was trained for another model, parameter set or sequence than ``model`` (None:
    the checkpoint's own model)."""
    estimator = load(checkpoint, device=device)
    if model is not None:
        require_same_model(estimator, model, str(checkpoint))
    return estimator


def require_same_model(network: NetworkEstimator, model: SignalModel, source: str) -> None:
    """Refuse (one line) a network trained for another model, parameter set or sequence than
    ``model``; ``source`` names the checkpoint in the message."""
    if not same_model(network.model, model):
        raise InputError(f"{source} was trained for {network.model!r} with sequence "
                         f"{sequences.sequence_hash(network.model.sequence)}, not for "
                         f"{model!r} with sequence {sequences.sequence_hash(model.sequence)}")


__all__ = ["NetworkEstimator", "CoefficientNetworkEstimator", "estimator_from_payload", "load",
           "network_estimator", "require_same_model"]
