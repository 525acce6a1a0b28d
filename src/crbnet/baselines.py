"""Stable public name ``crbnet.baselines`` (used in the README and by user code); the implementation
lives in :mod:`crbnet.estimators`."""

from crbnet.estimators import *  # noqa: F403
from crbnet.estimators import __all__  # noqa: F401
