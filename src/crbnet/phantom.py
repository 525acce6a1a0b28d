"""Deprecated: use :mod:`crbnet.imaging.phantom` (``crbnet.imaging.phantom.make_phantom``); the
tissue tables are in :mod:`crbnet.physics.tissues`. Every name still works and warns
(DeprecationWarning)."""

from crbnet import _deprecated

__getattr__, __dir__ = _deprecated.forwarding(__name__, "crbnet.imaging.phantom")
