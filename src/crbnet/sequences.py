"""Stable public name ``crbnet.sequences`` (used in the README and by user code); the implementation
lives in :mod:`crbnet.physics.sequences`."""

from crbnet.physics.sequences import *  # noqa: F403
from crbnet.physics.sequences import __all__  # noqa: F401
