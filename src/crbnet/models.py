"""Stable public name ``crbnet.models`` (used in the README and by user code); the implementation
lives in :mod:`crbnet.physics.models`."""

from crbnet.physics.models import *  # noqa: F403
from crbnet.physics.models import __all__  # noqa: F401
