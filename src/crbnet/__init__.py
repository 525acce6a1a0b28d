"""crbnet: Cramér–Rao bound-informed neural networks for quantitative MRI."""

from __future__ import annotations

from . import models, sequences
from .checkpoint import load
from .crb import crb, jacobian
from .models import get as get_model

__version__ = "0.1.0"

__all__ = ["crb", "jacobian", "models", "sequences", "get_model", "load", "__version__"]
