"""Stable public name ``crbnet.apply`` (used in the README and by user code); the implementation
lives in :mod:`crbnet.imaging.apply`."""

from crbnet.imaging.apply import *  # noqa: F403
from crbnet.imaging.apply import __all__  # noqa: F401
