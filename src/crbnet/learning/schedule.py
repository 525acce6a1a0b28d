"""The learning-rate schedule of training: linear warm-up, then cosine decay, per optimizer step."""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch


class WarmupCosine:
    """Learning rate per optimizer step: linear warm-up over ``warmup_steps``, then cosine
    decay to ``lr_min`` at ``total_steps``. Its whole state is the step count."""

    def __init__(self, optimizer: torch.optim.Optimizer, lr: float, lr_min: float,
                 warmup_steps: int, total_steps: int) -> None:
        self.optimizer, self.lr, self.lr_min = optimizer, lr, lr_min
        self.warmup_steps, self.total_steps = max(0, warmup_steps), max(1, total_steps)
        self.step_count = 0
        self._apply()

    def current(self) -> float:
        s = self.step_count
        if s < self.warmup_steps:
            return self.lr * (s + 1) / self.warmup_steps
        t = min(1.0, (s - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.lr_min + 0.5 * (self.lr - self.lr_min) * (1 + math.cos(math.pi * t))

    def _apply(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.current()

    def step(self) -> None:
        self.step_count += 1
        self._apply()

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "lr": self.lr, "lr_min": self.lr_min,
                "warmup_steps": self.warmup_steps, "total_steps": self.total_steps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step_count = int(state["step_count"])
        self._apply()


__all__ = ["WarmupCosine"]
