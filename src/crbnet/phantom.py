"""Stable public name ``crbnet.phantom`` (used in the README and by user code); the implementation
lives in :mod:`crbnet.imaging.phantom`."""

from crbnet.imaging.phantom import *  # noqa: F403
from crbnet.imaging.phantom import __all__  # noqa: F401
