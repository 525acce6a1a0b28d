"""Deprecated: the training names live in :mod:`crbnet.learning` — configuration in
:mod:`~crbnet.learning.training_config`, the loop in :mod:`~crbnet.learning.trainer`, the
schedule in :mod:`~crbnet.learning.schedule`, data-parallel set-up in
:mod:`~crbnet.learning.distributed` (docs/training.md). Every name still works and warns
(DeprecationWarning) naming its module.
"""

from types import MappingProxyType

from crbnet import _deprecated

_HOMES = {
    **{name: "crbnet.learning.training_config" for name in (
        "TrainConfig", "DataConfig", "SubspaceConfig", "OptimConfig", "LossConfig", "NetConfig",
        "build_config", "read_config_file", "parse_set_option", "deep_merge",
        "model_training_defaults")},
    **{name: "crbnet.learning.trainer" for name in ("Trainer", "train")},
    "WarmupCosine": "crbnet.learning.schedule",
    **{name: "crbnet.learning.distributed" for name in (
        "DistInfo", "init_distributed", "state_fingerprint")},
}


def _model_defaults() -> MappingProxyType:
    from crbnet.physics.models import REGISTRY

    return MappingProxyType({name: cls.training_defaults for name, cls in REGISTRY.items()})


__getattr__, __dir__ = _deprecated.forwarding(__name__, _HOMES, computed={
    "MODEL_DEFAULTS": (_model_defaults, "crbnet.learning.training_config."
                       "model_training_defaults(name) (each model's training_defaults)")})
