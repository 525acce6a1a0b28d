"""crbnet: Cramér–Rao bound-informed neural networks for quantitative MRI."""

from __future__ import annotations

from crbnet import models, sequences
from crbnet.estimators.network import load
from crbnet.physics.models import get as get_model
from crbnet.stats.crb import crb, jacobian

__version__ = "0.1.0"

__all__ = ["crb", "jacobian", "models", "sequences", "get_model", "load", "__version__"]
