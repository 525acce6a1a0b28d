"""Estimators: every way crbnet maps signals to parameters, registered by name.

Each follows the :class:`~crbnet.estimators.protocol.Estimator` protocol (``predict(signals) ->
[N, P]``, SI, float64) and registers itself in the estimator registry
(:mod:`crbnet.estimators.protocol`) from its own module — one file per estimator:

- ``'network'`` (:mod:`~crbnet.estimators.network`): a trained network from a checkpoint;
- ``'nlls'`` (:class:`NLLSEstimator`): voxel-wise maximum-likelihood fit, Levenberg–Marquardt;
- ``'dictionary'`` (:class:`DictionaryEstimator`): MRF dictionary matching in SVD space;
- ``'nlls_network'`` (:mod:`~crbnet.estimators.nlls_network_start`): NLLS started from a trained
  network's estimate (``checkpoint=PATH``).

The classical two also offer ``predict_with_m0(signals) -> (theta, m0)``.
"""

from __future__ import annotations

from crbnet.estimators.dictionary import DictionaryEstimator
from crbnet.estimators.nlls import NLLSEstimator, NLLSFit
from crbnet.estimators.protocol import Estimator, MethodTable
from crbnet.estimators.protocol import get as _get
from crbnet.physics.models.base import SignalModel

#: ``{name: class}`` of the registered estimators built from the model alone (a live view of
#: the registry: ``'nlls'``, ``'dictionary'`` and any registered later).
METHODS = MethodTable()


def get(method: str, model: SignalModel, **options) -> Estimator:
    """A registered estimator by name (``'nlls'``, ``'dictionary'``, ``'network'`` and
    ``'nlls_network'`` with ``checkpoint=PATH``, ...), configured by ``options`` (its keyword arguments)."""
    return _get(method, model, **options)


__all__ = ["get", "METHODS", "NLLSEstimator", "NLLSFit", "DictionaryEstimator"]
