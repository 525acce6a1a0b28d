"""An estimator of one's own: the median of the best-matching atoms of a random dictionary
(docs/models.md).

The estimator simulates ``n_atoms`` signals at parameters drawn uniformly over the model's
training ranges, matches each measured signal to them by the magnitude of the normalized inner
product (which does not depend on the complex M0), and returns, per parameter, the median over
the ``k`` best atoms — a smoother answer than the single best atom of a coarse dictionary. It
works for any signal model.

Use it from the command line without installing anything:

    crbnet evaluate --method examples/median_estimator.py:Median --model t2_decay \\
        --option n_atoms=500 --out eval_median --grid 8
"""

from __future__ import annotations

import numpy as np
import torch

from crbnet.estimators.protocol import as_signal_tensor
from crbnet.models import SignalModel


class Median:
    """Median of the k best-matching atoms of a random dictionary over the training ranges."""

    def __init__(self, model: SignalModel, n_atoms: int = 2000, k: int = 5, seed: int = 0
                 ) -> None:
        if n_atoms < 1 or not 1 <= k <= n_atoms:
            raise ValueError("need n_atoms >= 1 and 1 <= k <= n_atoms")
        self.model = model
        self.name = "median"
        self.k = int(k)
        low, high = (torch.tensor(v, dtype=torch.float64)
                     for v in zip(*model.train_ranges.values()))
        draw = torch.rand(int(n_atoms), model.n_parameters, dtype=torch.float64,
                          generator=torch.Generator().manual_seed(seed))
        self.atom_theta = low + (high - low) * draw                        # [A, P] SI
        atoms = model.simulate(self.atom_theta)                            # [A, T]
        self.atoms = atoms / torch.linalg.vector_norm(atoms, dim=1, keepdim=True)

    @property
    def parameters(self) -> tuple[str, ...]:
        return tuple(self.model.parameters)

    def predict(self, signals: torch.Tensor | np.ndarray) -> torch.Tensor:
        """[N, P] float64 estimates (SI) from complex signals [N, T]."""
        y = as_signal_tensor(signals, self.model.n_timepoints)            # checks the length
        match = (y @ self.atoms.conj().T).abs()                            # [N, A]
        best = match.topk(self.k, dim=1).indices                          # [N, k]
        return self.atom_theta[best].median(dim=1).values
