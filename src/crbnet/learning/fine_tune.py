"""``train --init``: start from the weights of a trained checkpoint instead of a random
initialization (fine-tuning, e.g. a bias-reduced network from a CRB-loss one).

The checkpoint must be for the same model (sequence, fixed parameters), the same input
representation (subspace basis) and the same network (architecture and output ranges);
anything else is refused with one line. The optimizer and the schedule start afresh.
"""

from __future__ import annotations

from pathlib import Path

import torch

from crbnet.errors import InputError
from crbnet.learning.checkpoint import basis_from_real, model_to_dict, read
from crbnet.learning.nets import ParameterNet
from crbnet.physics.models.base import SignalModel
from crbnet.stats.subspace import Subspace


class InitCheckpoint:
    """The ``--init`` checkpoint, read and checked against ``model``.

    Args:
        path: a checkpoint file or a run directory holding ``checkpoint.pt``.
        model: the model being trained.
    """

    def __init__(self, path: str | Path, model: SignalModel) -> None:
        path = Path(path)
        self.path = path / "checkpoint.pt" if path.is_dir() else path
        self.payload = read(self.path)
        mine = model_to_dict(model)
        theirs = self.payload.get("model", {})
        if theirs != mine:
            what = [k for k in mine if theirs.get(k) != mine[k]] or ["structure"]
            raise InputError(f"--init: {self.path} was trained for another model or sequence "
                             f"({', '.join(what)} differ); give the same --model, --sequence "
                             f"and --fix")

    def subspace(self) -> Subspace | None:
        """The checkpoint's input basis as this run's subspace (online training)."""
        basis = basis_from_real(self.payload["basis"])
        if basis is None:
            return None
        stored = self.payload.get("subspace") or {}
        return Subspace(basis, torch.ones(basis.shape[1], dtype=torch.float64),
                        float(stored.get("energy") or 1.0))

    def check_user_basis(self, user_basis: torch.Tensor | None) -> None:
        """Refuse online training whose ``--basis`` differs from the one the checkpoint's network
        was trained in (or a ``--basis`` for a checkpoint that had none, and the reverse): the
        loss would be normalized by the CRBs of another basis than the network reads."""
        from crbnet.stats.subspace import basis_hash

        stored = self.payload.get("subspace") or {}
        theirs = (stored.get("basis") or {}).get("hash") if stored.get("source") == "user" else None
        mine = None if user_basis is None else basis_hash(user_basis)
        if theirs != mine:
            had = f"--basis with hash {theirs}" if theirs else "no --basis"
            given = f"--basis with hash {mine}" if mine else "no --basis"
            raise InputError(f"--init: the checkpoint was trained with {had}, this run has "
                             f"{given}; give the same --basis")

    def check_basis(self, subspace: Subspace | None) -> None:
        """Refuse a run whose subspace (offline: the dataset's) differs from the checkpoint's."""
        theirs = basis_from_real(self.payload["basis"])
        mine = None if subspace is None else subspace.basis
        same = (theirs is None and mine is None) or (
            theirs is not None and mine is not None and theirs.shape == mine.shape
            and torch.allclose(theirs, mine.to(theirs.dtype), atol=1e-6))
        if not same:
            raise InputError("--init: the checkpoint's input representation (subspace basis) "
                             "differs from this run's; train from the same dataset/subspace")

    def load_weights(self, net: ParameterNet) -> None:
        """Copy the checkpoint's weights into ``net`` after checking its description."""
        stored = self.payload["network"]["description"]
        mine = net.describe()
        what = [k for k in mine if k != "output_log" and stored.get(k) != mine[k]]
        if stored.get("output_log") != mine["output_log"]:
            what.append("output_log")
        if what:
            raise InputError(f"--init: the checkpoint's network differs from this run's "
                             f"({', '.join(what)}); give the same [net] options and training "
                             f"ranges")
        net.load_state_dict(self.payload["network"]["state_dict"])


__all__ = ["InitCheckpoint"]
