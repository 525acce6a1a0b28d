"""Deprecated: use :mod:`crbnet.imaging.apply` (``crbnet.imaging.apply.apply_to_volume``).
Every name still works and warns (DeprecationWarning)."""

from crbnet import _deprecated

__getattr__, __dir__ = _deprecated.forwarding(__name__, "crbnet.imaging.apply")
