"""Training of CRB-informed networks — the public names, kept here for existing imports.

The code lives in :mod:`crbnet.learning`: configuration in
:mod:`~crbnet.learning.training_config`, the loop in :mod:`~crbnet.learning.trainer`, the run
directory in :mod:`~crbnet.learning.run_files`, the schedule in
:mod:`~crbnet.learning.schedule` and data-parallel set-up in :mod:`~crbnet.learning.distributed`
(see docs/training.md).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

from crbnet.learning.distributed import DistInfo, init_distributed, state_fingerprint
from crbnet.learning.schedule import WarmupCosine
from crbnet.learning.trainer import Trainer, train
from crbnet.learning.training_config import (
                                       DataConfig,
                                       LossConfig,
                                       NetConfig,
                                       OptimConfig,
                                       SubspaceConfig,
                                       TrainConfig,
                                       build_config,
                                       deep_merge,
                                       model_training_defaults,
                                       parse_set_option,
                                       read_config_file,
)
from crbnet.physics.models import REGISTRY as _MODELS

#: The built-in models' training defaults by name (read-only; each model declares its own as
#: :attr:`~crbnet.physics.models.base.SignalModel.training_defaults`).
MODEL_DEFAULTS: Mapping[str, Mapping] = MappingProxyType(
    {name: cls.training_defaults for name, cls in _MODELS.items()})

__all__ = ["TrainConfig", "DataConfig", "SubspaceConfig", "OptimConfig", "LossConfig",
           "NetConfig", "MODEL_DEFAULTS", "Trainer", "train", "build_config", "read_config_file",
           "parse_set_option", "WarmupCosine", "deep_merge", "model_training_defaults",
           "DistInfo", "init_distributed", "state_fingerprint"]
