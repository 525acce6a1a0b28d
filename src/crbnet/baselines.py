"""Deprecated: ``crbnet.baselines`` re-exported the estimators under a misleading name; use
:mod:`crbnet.estimators` (``crbnet.estimators.get("nlls", model)``). Every name still works and
warns (DeprecationWarning)."""

from crbnet import _deprecated

__getattr__, __dir__ = _deprecated.forwarding(__name__, "crbnet.estimators")
