"""Classical estimators the networks are compared with; each follows the
:class:`~crbnet.estimator.Estimator` protocol (``predict(signals) -> [N, P]``, SI, float64) and
adds ``predict_with_m0(signals) -> (theta, m0)``.

- :class:`NLLSEstimator` (``'nlls'``): voxel-wise maximum-likelihood fit, Levenberg–Marquardt.
- :class:`DictionaryEstimator` (``'dictionary'``): MRF dictionary matching in SVD space.
"""

from __future__ import annotations

import inspect

from ..errors import InputError
from ..models.base import SignalModel
from .dictionary import DictionaryEstimator
from .nlls import NLLSEstimator, NLLSFit

METHODS: dict[str, type] = {"nlls": NLLSEstimator, "dictionary": DictionaryEstimator}


def get(method: str, model: SignalModel, **options) -> NLLSEstimator | DictionaryEstimator:
    """A baseline estimator by name (``'nlls'`` or ``'dictionary'``), configured by ``options``
    (the constructor's keyword arguments)."""
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; available: {', '.join(METHODS)}")
    cls = METHODS[method]
    accepted = [name for name in inspect.signature(cls.__init__).parameters
                if name not in ("self", "model")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise InputError(f"unknown option(s) for {method}: {', '.join(unknown)}; accepted: "
                         f"{', '.join(accepted)}")
    try:
        return cls(model, **options)
    except InputError:
        raise
    except (TypeError, ValueError) as exc:
        raise InputError(f"bad option for {method}: {exc}") from None


__all__ = ["get", "METHODS", "NLLSEstimator", "NLLSFit", "DictionaryEstimator"]
