"""The training configuration: its schema, the layers it is assembled from, and how they are read.

``TrainConfig`` is assembled in this order, later wins: built-in defaults → the model's
:attr:`~crbnet.physics.models.base.SignalModel.training_defaults` → config file (TOML; JSON and YAML
too) → command line (``--set SECTION.KEY=VALUE`` and the named flags). A config file has the
tables ``[model]`` (name, fixed, free, sequence, times, options — folded into the model
arguments by the CLI), ``[sampling]`` (``NAME = {range = [lo, hi], distribution =
"log-uniform"}``), ``[data]``, ``[subspace]``, ``[net]``, ``[optim]``, ``[loss]`` and a top-level
``seed``; docs/training.md lists every key.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from crbnet import files as cio
from crbnet.config import check_table, check_value
from crbnet.errors import InputError
from crbnet.learning import losses
from crbnet.learning.nets import NetConfig
from crbnet.physics.models.base import SignalModel
from crbnet.stats.noise import check_snr

# ---------------------------------------------------------------------------------------------
# Schema


@dataclass
class DataConfig:
    """Where samples come from and how they are measured.

    Attributes:
        mode: 'online' (drawn while training) or 'offline' (an HDF5 file from crbnet dataset).
        dataset: path of the HDF5 file (offline).
        snr: training SNR = |M0|/σ, a value or [low, high] (log-uniform per sample).
        m0_magnitude: [low, high] of |M0| (uniform); its phase is uniform in [0, 2π).
        batch_size: noisy samples per batch and process.
        batches_per_epoch: batches per epoch (online).
        pool_size, pool_refresh: online pool (0 = fresh θ and CRB every batch); see
            :class:`crbnet.learning.batches.OnlineSource`.
        val_size: validation samples (offline: the last rows of the file, held out).
        block_rows, blocks_in_memory: offline streaming granularity.
        sampling: per-parameter range/distribution overrides.
    """

    mode: str = "online"
    dataset: str | None = None
    snr: float | list[float] = 50.0
    m0_magnitude: list[float] = field(default_factory=lambda: [0.5, 2.0])
    batch_size: int = 256
    batches_per_epoch: int = 100
    pool_size: int = 0
    pool_refresh: int = 0
    val_size: int = 2048
    block_rows: int = 4096
    blocks_in_memory: int = 4
    sampling: dict[str, dict] = field(default_factory=dict)


@dataclass
class SubspaceConfig:
    """SVD compression: ``k`` (0 = choose by ``energy``), ``n_fit`` noiseless signals for the
    SVD, ``n_check`` points for the CRB-inflation report; ``enabled = false`` feeds the full
    signal."""

    enabled: bool = True
    k: int = 0
    energy: float = 0.9999999
    n_fit: int = 4096
    n_check: int = 128


@dataclass
class OptimConfig:
    """Adam with linear warm-up then cosine decay from ``lr`` to ``lr_min`` (per step)."""

    epochs: int = 30
    lr: float = 1e-3
    lr_min: float = 1e-5
    warmup_epochs: float = 1.0
    weight_decay: float = 0.0
    grad_clip: float = 0.0


@dataclass
class LossConfig:
    """Training loss. ``mse_weights``: per-parameter weights in 1/SI² (default 1/width² of the
    training range). Bias-reduced loss (see :mod:`crbnet.learning.losses`): ``realizations`` R noise
    draws per noiseless sample (a batch holds ``batch_size // R`` samples × R), weight ``lam``
    and threshold ``delta`` (CRB units) of the variance penalty. ``name`` is any loss
    :func:`crbnet.learning.losses.get` finds (registered, plugin, ``FILE.py:NAME``);
    ``options``: the settings that loss declares, name → value (``--loss-option``)."""

    name: str = "crb"
    mse_weights: dict[str, float] = field(default_factory=dict)
    realizations: int = 8
    lam: float = 0.1
    delta: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    subspace: SubspaceConfig = field(default_factory=SubspaceConfig)
    net: NetConfig = field(default_factory=NetConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    seed: int = 0

    SECTIONS = ("data", "subspace", "net", "optim", "loss")

    def to_dict(self) -> dict:
        out = {s: asdict(getattr(self, s)) if s != "net" else self.net.to_dict()
               for s in self.SECTIONS}
        out["seed"] = self.seed
        if not out["loss"]["options"]:   # a loss without options: the record runs had before
            del out["loss"]["options"]   # options existed (so they still resume)
        return json.loads(json.dumps(out))  # plain JSON types (lists, not tuples)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        cfg = cls._construct(d)
        cfg.validate()
        return cfg

    @classmethod
    def _construct(cls, d: Mapping[str, Any]) -> "TrainConfig":
        cls.check_types(d)
        kwargs: dict[str, Any] = {"seed": int(d.get("seed", 0))}
        for name, typ in cls.section_types().items():
            section = dict(d.get(name, {}))
            try:
                kwargs[name] = typ(**section)
            except TypeError as exc:
                raise InputError(f"[{name}]: {exc}") from None
        return cls(**kwargs)

    @staticmethod
    def section_types() -> dict[str, type]:
        return {"data": DataConfig, "subspace": SubspaceConfig, "net": NetConfig,
                "optim": OptimConfig, "loss": LossConfig}

    @classmethod
    def check_types(cls, d: Mapping[str, Any]) -> None:
        """Check the keys and value types of a whole or partial config (one layer: a file,
        the command line) against the section dataclasses' annotations; ranges are checked by
        :meth:`validate` once the layers are merged."""
        unknown = set(d) - set(cls.SECTIONS) - {"seed"}
        if unknown:
            raise InputError(f"unknown config section(s): {', '.join(sorted(unknown))}")
        if "seed" in d:
            check_value("seed", int, d["seed"])
        for name, typ in cls.section_types().items():
            if name in d:
                check_table(name, typ, d[name])

    def validate(self, whole: bool = True) -> None:
        """Check every value's range; ``whole=False`` (one layer, e.g. the config file, before
        the command line is merged in) leaves out the checks that tie two values together."""
        d, o, l, s = self.data, self.optim, self.loss, self.subspace
        if not 0 <= self.seed < 2 ** 63:
            raise InputError(f"seed must be a whole number from 0 to 2^63 - 1, got {self.seed}")
        if d.mode not in ("online", "offline"):
            raise InputError(f"data.mode must be 'online' or 'offline', got {d.mode!r}")
        if whole and d.mode == "offline" and not d.dataset:
            raise InputError("offline training needs a dataset (--dataset FILE)")
        check_snr(d.snr)
        if len(d.m0_magnitude) != 2:
            raise InputError(f"data.m0_magnitude must be [low, high], got {d.m0_magnitude!r}")
        lo, hi = (float(v) for v in d.m0_magnitude)
        if not 0 < lo <= hi:
            raise InputError("data.m0_magnitude must be [low, high] with 0 < low <= high")
        for name in ("batch_size", "batches_per_epoch", "val_size", "block_rows",
                     "blocks_in_memory"):
            if int(getattr(d, name)) < 1:
                raise InputError(f"data.{name} must be >= 1")
        if d.pool_size < 0 or d.pool_refresh < 0:
            raise InputError("data.pool_size and data.pool_refresh must be >= 0")
        if o.epochs < 1 or not o.lr > 0 or o.lr_min < 0 or o.warmup_epochs < 0:
            raise InputError("optim: epochs >= 1, lr > 0, lr_min >= 0, warmup_epochs >= 0")
        loss = losses.get(l.name)          # the registry as it is now, plugins included
        l.options = loss.option_values(l.options)   # typed, every declared option given
        if loss.repeated:
            if not 2 <= l.realizations <= (d.batch_size if whole else l.realizations):
                raise InputError(f"{l.name} needs 2 <= loss.realizations <= batch_size "
                                 f"({d.batch_size}), got {l.realizations}")
            if l.lam < 0 or l.delta < 0:
                raise InputError("loss.lam and loss.delta must be >= 0")
        if s.k < 0 or not 0 < s.energy <= 1 or s.n_fit < 1 or s.n_check < 0:
            raise InputError("subspace: k >= 0, 0 < energy <= 1, n_fit >= 1, n_check >= 0")


# ---------------------------------------------------------------------------------------------
# Layers


def deep_merge(base: dict, update: Mapping[str, Any]) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict) and key != "sampling":
            out[key] = deep_merge(out[key], value)
        elif key == "sampling" and isinstance(value, Mapping):
            merged = copy.deepcopy(out.get(key, {}))
            for p, entry in value.items():
                merged[p] = {**merged.get(p, {}), **dict(entry)}
            out[key] = merged
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_config_file(path: str | Path) -> dict:
    """Read a TOML (preferred), JSON or YAML (if PyYAML is installed) config file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config file not found: {path}")
    text = cio.read_text(path, "config file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            data = json.loads(text)
        elif suffix in (".yaml", ".yml"):
            try:
                import yaml  # type: ignore[import-untyped]
            except ImportError:
                raise InputError("YAML config files need PyYAML; use TOML instead") from None
            data = yaml.safe_load(text) or {}
        else:
            import tomllib

            data = tomllib.loads(text)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot parse config file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"config file {path} must hold a table/object")
    return data


def model_training_defaults(model: SignalModel | type[SignalModel] | str) -> dict:
    """The model's own training defaults (:attr:`SignalModel.training_defaults`, partial config
    sections found by measurement); ``model`` is a model, a model class or anything
    :func:`crbnet.physics.models.resolve` accepts. ``{}`` for a model that declares none."""
    if isinstance(model, str):
        from crbnet.physics.models import resolve

        model = resolve(model)
    defaults = getattr(model, "training_defaults", None) or {}
    TrainConfig.check_types(defaults)
    return copy.deepcopy(dict(defaults))


def build_config(model: SignalModel | type[SignalModel] | str,
                 file_data: Mapping[str, Any] | None = None,
                 overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """defaults → the model's training defaults → file → overrides; ``[sampling]`` and
    ``[model]`` of the file are handled by the caller (sampling is folded into
    ``data.sampling`` here). ``model``: a model, a model class or a model name."""
    base = TrainConfig().to_dict()
    merged = deep_merge(base, model_training_defaults(model))
    file_data = dict(file_data or {})
    file_data.pop("model", None)
    if "sampling" in file_data:
        check_value("sampling", dict[str, dict], file_data["sampling"])
        file_data.setdefault("data", {})
        check_table("data", DataConfig, file_data["data"])
        file_data["data"] = {**file_data["data"], "sampling": file_data.pop("sampling")}
    # Every layer is checked on its own: a wrong value in the file is an error even where the
    # command line overrides it.
    TrainConfig.check_types(file_data)
    TrainConfig.check_types(overrides or {})
    if file_data:   # ranges too: the command line must not hide a wrong value in the file
        TrainConfig._construct(deep_merge(merged, file_data)).validate(whole=False)
    merged = deep_merge(merged, file_data)
    merged = deep_merge(merged, overrides or {})
    return TrainConfig.from_dict(merged)


def check_config_file(model: SignalModel | type[SignalModel] | str,
                      file_data: Mapping[str, Any]) -> None:
    """Check the values of a config file's training tables (types and ranges) for commands
    that use only its [model] and [sampling] tables (``crbnet dataset``)."""
    layer = {k: v for k, v in file_data.items() if k not in ("model", "sampling")}
    TrainConfig.check_types(layer)
    base = deep_merge(TrainConfig().to_dict(), model_training_defaults(model))
    TrainConfig._construct(deep_merge(base, layer)).validate(whole=False)


def parse_set_option(items: list[str]) -> dict:
    """``--set section.key=value`` (value parsed as TOML: numbers, true/false, [lists],
    "strings"; a bare word is a string) -> nested dict."""
    import tomllib

    out: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) < 2 or not all(parts):
            raise InputError(f"--set expects SECTION.KEY=VALUE, got {item!r}")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        node = out
        for i, p in enumerate(parts[:-1]):
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise InputError(f"--set {key.strip()}: {'.'.join(parts[:i + 1])} is given a "
                                 "value elsewhere, it cannot also hold keys")
        node[parts[-1]] = value
    return out


__all__ = ["TrainConfig", "DataConfig", "SubspaceConfig", "OptimConfig", "LossConfig",
           "NetConfig", "build_config", "read_config_file", "parse_set_option", "deep_merge",
           "model_training_defaults"]
