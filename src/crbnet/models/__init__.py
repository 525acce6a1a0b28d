"""Signal models. ``get(name, sequence=None)`` returns a configured model.

``sequence`` is a sequence object, a path (JSON for every model, control-point CSV for
``mt_hybrid_state``) or None for the model's default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from .. import sequences as seqs
from .analytic import IRT1, T2Decay
from .base import ModelError, ParameterSpec, SignalModel
from .fisp_mrf import FISPMRF
from .mt_hybrid_state import MTHybridState

REGISTRY: dict[str, type[SignalModel]] = {
    cls.name: cls for cls in (MTHybridState, FISPMRF, T2Decay, IRT1)
}


def names() -> list[str]:
    return list(REGISTRY)


def get(name: str, sequence: seqs.Sequence | str | Path | None = None,
        fixed: Mapping[str, float] | None = None, **options) -> SignalModel:
    """Build model ``name`` with an optional sequence (object or file path).

    ``fixed`` maps parameter names to values held fixed (not estimated); None keeps the model's
    default (B1 = 1 where the model has B1); ``{}`` estimates every parameter.
    """
    if name not in REGISTRY:
        raise ModelError(f"unknown model {name!r}; available: {', '.join(REGISTRY)}")
    cls = REGISTRY[name]
    if isinstance(sequence, (str, Path)):
        sequence = seqs.load(sequence, cls.sequence_kind)
    return cls(sequence=sequence, fixed=fixed, **options)


__all__ = ["get", "names", "REGISTRY", "SignalModel", "ParameterSpec", "ModelError",
           "MTHybridState", "FISPMRF", "T2Decay", "IRT1"]
