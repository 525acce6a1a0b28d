"""Sequence design with the Cramér–Rao bound: find the acquisition that estimates the tissue
parameters most precisely, within what a 3 T scanner can play.

``SequenceDesigner(model, points, snr, weights, space).fit()`` returns a :class:`DesignResult`;
:mod:`.controls` says what is designed for each sequence kind and how the hardware limits hold
by construction, :mod:`.cost` defines the cost, :mod:`.points` picks tissue points.
"""

from crbnet.design.controls import CONTROLS, DesignSpace
from crbnet.design.designer import DesignResult, SequenceDesigner

__all__ = ["CONTROLS", "DesignSpace", "DesignResult", "SequenceDesigner"]
