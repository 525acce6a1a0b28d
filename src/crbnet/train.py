"""Training of CRB-informed networks: configuration, trainer, checkpoints, metrics.

Learning only — physics is in ``models/``, the CRB in ``crb.py``, data drawing in ``data.py`` /
``datasets.py``, losses in ``losses.py``, networks in ``nets.py``.

Configuration (``TrainConfig``) is assembled in this order, later wins:
built-in defaults → per-model defaults (:data:`MODEL_DEFAULTS`) → config file (TOML; JSON and
YAML too) → command line. A config file has the tables ``[model]`` (``fixed``, ``sequence``),
``[sampling]`` (``NAME = {range = [lo, hi], distribution = "log-uniform"}``), ``[data]``,
``[subspace]``, ``[net]``, ``[optim]``, ``[loss]`` and a top-level ``seed``; see
docs/training.md.

One epoch = ``batches_per_epoch`` batches online, one pass over the training rows offline.
After every epoch: a fixed validation set (fixed θ, M0 and noise) is evaluated in CRB units per
parameter — ``mean (θ̂−θ)²/CRB`` — whatever the training loss, then RUN_DIR/checkpoint.pt
(atomic), metrics.csv and summary.json are rewritten and loss.png is redrawn (at most every
30 s and at the end).

Reproducibility and ``--resume``: every random piece has its own seeded stream
(:func:`crbnet.data.derived_generator`): network initialization, subspace, validation set,
online pool blocks, and one data generator per process whose state is saved each epoch with the
weights, Adam state, schedule step and epoch. A resumed run therefore continues bit-for-bit
like an uninterrupted one (same device, thread count and process count).

Data-parallel training: run under ``torchrun --nproc_per_node N -m crbnet train ...``; each
process draws its own data (its rank enters its data seed), gradients are averaged by DDP
(gloo on CPU, nccl on CUDA), ``batch_size`` is per process, and only rank 0 validates and
writes files.
"""

from __future__ import annotations

import copy
import csv
import io as _io
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from . import io as cio
from . import losses
from .checkpoint import (NORMALIZATION, basis_from_real, basis_to_real, checksum,
                         model_to_dict, read, save)
from .data import (SNR_DEFINITION, CleanBatch, NoisyBatch, OnlineSource, check_snr, derived_generator,
                   make_noisy, project, sampler_from_spec, simulate_clean)
from .config import check_table, check_value
from .errors import ComputationError, InputError
from .models.base import SignalModel
from .nets import NetConfig, ParameterNet, count_parameters, output_ranges
from .subspace import (Subspace, basis_hash, basis_record, choose_k, crb_inflation, fit_subspace,
                       user_subspace)

# ---------------------------------------------------------------------------------------------
# Configuration


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
            :class:`crbnet.data.OnlineSource`.
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
    training range). Bias-reduced loss (see :mod:`crbnet.losses`): ``realizations`` R noise
    draws per noiseless sample (a batch holds ``batch_size // R`` samples × R), weight ``lam``
    and threshold ``delta`` (CRB units) of the variance penalty."""

    name: str = "crb"
    mse_weights: dict[str, float] = field(default_factory=dict)
    realizations: int = 8
    lam: float = 0.1
    delta: float = 1.0


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
        return json.loads(json.dumps(out))  # plain JSON types (lists, not tuples)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        cls.check_types(d)
        kwargs: dict[str, Any] = {"seed": int(d.get("seed", 0))}
        for name, typ in cls.section_types().items():
            section = dict(d.get(name, {}))
            try:
                kwargs[name] = typ(**section)
            except TypeError as exc:
                raise InputError(f"[{name}]: {exc}") from None
        cfg = cls(**kwargs)
        cfg.validate()
        return cfg

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

    def validate(self) -> None:
        d, o, l, s = self.data, self.optim, self.loss, self.subspace
        if d.mode not in ("online", "offline"):
            raise InputError(f"data.mode must be 'online' or 'offline', got {d.mode!r}")
        if d.mode == "offline" and not d.dataset:
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
        if l.name not in losses.LOSSES:
            raise InputError(f"loss must be one of {losses.LOSSES}, got {l.name!r}")
        if losses.get(l.name).repeated:
            if not 2 <= l.realizations <= d.batch_size:
                raise InputError(f"{l.name} needs 2 <= loss.realizations <= batch_size "
                                 f"({d.batch_size}), got {l.realizations}")
            if l.lam < 0 or l.delta < 0:
                raise InputError("loss.lam and loss.delta must be >= 0")
        if s.k < 0 or not 0 < s.energy <= 1 or s.n_fit < 1 or s.n_check < 0:
            raise InputError("subspace: k >= 0, 0 < energy <= 1, n_fit >= 1, n_check >= 0")


# Per-model defaults, found by measurement (docs/training.md lists what was tried).
MODEL_DEFAULTS: dict[str, dict] = {
    "t2_decay": {
        "data": {"batch_size": 256, "batches_per_epoch": 100, "pool_size": 0},
        "net": {"width": 128, "depth": 3},
        "optim": {"epochs": 30, "lr": 5e-3},
    },
    "ir_t1": {
        "data": {"batch_size": 256, "batches_per_epoch": 100, "pool_size": 0},
        "net": {"width": 128, "depth": 3},
        "optim": {"epochs": 60, "lr": 5e-3},
    },
    "fisp_mrf": {
        "data": {"batch_size": 256, "batches_per_epoch": 400, "pool_size": 8192,
                 "pool_refresh": 1024, "val_size": 1024},
        "net": {"width": 256, "depth": 4},
        "optim": {"epochs": 30, "lr": 2e-3},
    },
    "mt_hybrid_state": {
        "data": {"batch_size": 256, "batches_per_epoch": 200, "pool_size": 8192,
                 "pool_refresh": 512, "val_size": 1024},
        "net": {"width": 256, "depth": 4},
        "optim": {"epochs": 40, "lr": 1e-3},
    },
}


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


def build_config(model_name: str, file_data: Mapping[str, Any] | None = None,
                 overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """defaults → MODEL_DEFAULTS[model] → file → overrides; ``[sampling]`` and ``[model]`` of
    the file are handled by the caller (sampling is folded into ``data.sampling`` here)."""
    base = TrainConfig().to_dict()
    merged = deep_merge(base, MODEL_DEFAULTS.get(model_name, {}))
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
    merged = deep_merge(merged, file_data)
    merged = deep_merge(merged, overrides or {})
    return TrainConfig.from_dict(merged)


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


# ---------------------------------------------------------------------------------------------
# Learning-rate schedule


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


# ---------------------------------------------------------------------------------------------
# Distributed helpers


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def init_distributed(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun describes in the environment (no-op otherwise)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistInfo(rank, world, local, backend), device


def _broadcast_flag(flag: bool, info: DistInfo, device: torch.device) -> bool:
    if not info.active:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int64,
                     device=device if info.backend == "nccl" else "cpu")
    dist.broadcast(t, src=0)
    return bool(t.item())


def _gather(obj: Any, info: DistInfo) -> list:
    if not info.active:
        return [obj]
    out: list = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


def state_fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    return checksum(dict(state))[:16]


# ---------------------------------------------------------------------------------------------
# Trainer


class Trainer:
    """Trains a :class:`~crbnet.nets.ParameterNet` for ``model`` and writes RUN_DIR.

    Args:
        model: signal model (sequence and fixed parameters included).
        config: :class:`TrainConfig`.
        run_dir: output directory (checkpoint.pt, metrics.csv, loss.png, summary.json).
        device: torch device for the network (and online simulation).
        max_minutes: stop at the first epoch end after this many minutes of this invocation.
        resume: continue from RUN_DIR/checkpoint.pt (the config must be the same).
        init: start from the weights of this trained checkpoint (file or run directory) instead
            of a random initialization — fine-tuning, e.g. a bias-reduced network from a
            CRB-loss one. Same model (sequence, fixed parameters), subspace basis, network
            architecture and output ranges are required; anything else is refused. Its basis
            replaces the subspace fit. The optimizer and schedule start afresh.
        progress: progress bars (None: only on a terminal).
        log: where progress lines go: a text stream, None (nowhere) or "stderr" (the
            ``sys.stderr`` of the moment each line is written, which may be redirected).
    """

    def __init__(self, model: SignalModel, config: TrainConfig, run_dir: str | Path,
                 device: torch.device | str = "cpu", max_minutes: float | None = None,
                 resume: bool = False, progress: bool | None = None,
                 log: Any = "stderr", basis: torch.Tensor | None = None,
                 init: str | Path | None = None) -> None:
        self.model, self.config = model, config
        # A user's basis: the network reads coefficients in it and trains against their CRBs.
        self.user_basis = None if basis is None else basis.to(torch.complex128)
        self.init = None if init is None else Path(init)
        self.init_payload: dict | None = None
        self.run_dir = Path(run_dir)
        self.device = torch.device(device)
        self.max_minutes = max_minutes
        self.resume = resume
        self.progress = progress
        self.log = log
        if max_minutes is not None and not max_minutes > 0:
            raise InputError("--max-minutes must be positive")

    # ---- small helpers --------------------------------------------------------------------
    def _say(self, text: str) -> None:
        if self.dist.is_main and self.log is not None:
            tqdm.write(text, file=sys.stderr if self.log == "stderr" else self.log)

    def _scales(self) -> torch.Tensor:
        """Per-parameter scale (width of the training range, SI): losses are computed on
        θ/scale and CRB/scale², which leaves CRB ratios unchanged and keeps float32 sane."""
        lo = torch.tensor(self.sampler.low, dtype=torch.float64)
        hi = torch.tensor(self.sampler.high, dtype=torch.float64)
        return (hi - lo).to(self.device)

    def _clean_batch_size(self) -> int:
        """Noiseless samples per batch: all of the batch, or batch_size // R for a loss that
        measures each R times (the bias-reduced loss)."""
        cfg = self.config
        if losses.get(cfg.loss.name).repeated:
            return cfg.data.batch_size // cfg.loss.realizations
        return cfg.data.batch_size

    # ---- set-up ------------------------------------------------------------------------------
    def _setup_data(self) -> None:
        cfg, model = self.config, self.model
        seed = cfg.seed
        self.dataset = None
        if cfg.data.mode == "offline":
            from .datasets import Dataset, HDF5Source, check_compatible

            ds = Dataset(cfg.data.dataset)
            check_compatible(ds, model)
            if cfg.data.sampling:
                raise InputError("offline training uses the dataset's sampling distribution; "
                                 "remove the [sampling] overrides")
            self.sampler = sampler_from_spec(model, ds.sampling)
            n_train = ds.n - cfg.data.val_size
            if n_train < cfg.data.batch_size:
                raise InputError(f"dataset has {ds.n} rows: not enough for val_size="
                                 f"{cfg.data.val_size} plus one batch")
            self.dataset = ds
            self.subspace = self._offline_subspace(ds, n_train)
            if self.init_payload is not None:
                self._check_init_basis()
            k = None if self.subspace is None else self.subspace.k
            basis_for_signals = (None if ds.storage == "coefficients" or self.subspace is None
                                 else self.subspace.basis)
            clean_bs = self._clean_batch_size()
            self.source = HDF5Source(ds, 0, n_train, clean_bs, k=k,
                                     basis=basis_for_signals, block_rows=cfg.data.block_rows,
                                     blocks_in_memory=cfg.data.blocks_in_memory, seed=seed,
                                     rank=self.dist.rank, world=self.dist.world,
                                     device=self.device)
            val_clean = (ds.read(n_train, ds.n, k, basis_for_signals) if self.dist.is_main
                         else None)
            stats_clean = ds.read(0, min(n_train, cfg.subspace.n_fit), k, basis_for_signals)
        else:
            self.sampler = sampler_from_spec(model, cfg.data.sampling)
            theta_fit = self.sampler.sample(cfg.subspace.n_fit, derived_generator(seed, "basis"))
            signals_fit = model.simulate(theta_fit)
            if self.init_payload is not None:
                self.subspace = self._init_subspace()
            elif self.user_basis is not None:
                self.subspace = user_subspace(self.user_basis, signals_fit)
            elif cfg.subspace.enabled:
                k = cfg.subspace.k or None
                if k is not None and k > min(signals_fit.shape):
                    raise InputError(f"subspace.k={k} exceeds min(n_fit, T) = "
                                     f"{min(signals_fit.shape)}")
                self.subspace = fit_subspace(signals_fit, k=k, energy=cfg.subspace.energy)
            else:
                self.subspace = None
            basis = None if self.subspace is None else self.subspace.basis
            clean_bs = self._clean_batch_size()
            self.source = OnlineSource(model, self.sampler, basis, clean_bs,
                                       cfg.data.batches_per_epoch, cfg.data.pool_size,
                                       cfg.data.pool_refresh, seed=seed, rank=self.dist.rank,
                                       device=self.device, crb_basis=self.user_basis)
            theta_val = self.sampler.sample(cfg.data.val_size,
                                            derived_generator(seed, "validation"))
            val_clean = (simulate_clean(model, theta_val, basis, crb_basis=self.user_basis)
                         if self.dist.is_main else None)
            stats_clean = CleanBatch(theta_fit, project(signals_fit, basis).to(torch.complex64),
                                     torch.full_like(theta_fit, float("nan")))
        # Only rank 0 validates; the others skip the (CRB-heavy) validation set.
        self.val = None if val_clean is None else make_noisy(
            val_clean, cfg.data.snr, tuple(cfg.data.m0_magnitude),
            derived_generator(seed, "validation-noise"))
        self.val_singular = (0 if self.val is None
                             else int((~torch.isfinite(self.val.crb)).any(1).sum()))
        self.prior_ratio = None if self.val is None else self._crb_over_prior(self.val)
        self.stats_inputs = make_noisy(stats_clean, cfg.data.snr, tuple(cfg.data.m0_magnitude),
                                       derived_generator(seed, "input-statistics")).signals

    def _crb_over_prior(self, val: NoisyBatch) -> dict[str, float]:
        """Per parameter, median over the validation set of CRB / Var(training prior).

        Near or above ~0.1 the training range itself says about as much as the data: a network
        can then score MSE/CRB < 1 only by shrinking towards the prior (being biased) — the
        bound holds for unbiased estimators."""
        out = {}
        for j, p in enumerate(self.model.parameters):
            var = val.theta[:, j].double().var()
            c = val.crb[:, j].double()
            c = c[torch.isfinite(c)]
            out[p] = float((c / var).median()) if c.numel() else float("inf")
        return out

    def _offline_subspace(self, ds: Any, n_train: int) -> Subspace | None:
        s = self.config.subspace
        stored_user = ds.subspace is not None and ds.subspace.source == "user"
        if self.user_basis is not None or stored_user:
            given = None if self.user_basis is None else basis_hash(self.user_basis)
            stored = None if not stored_user else basis_hash(ds.subspace.basis)
            if given != stored:
                have = f"coefficients in basis {stored}" if stored else "no user basis"
                want = f"basis {given}" if given else "no basis (give --basis)"
                raise InputError(f"dataset {ds.path} holds {have}, training was asked for "
                                 f"{want}: dataset and training need the same --basis")
            return ds.subspace
        if ds.storage == "coefficients":
            if not s.enabled:
                raise InputError("this dataset stores subspace coefficients; subspace.enabled "
                                 "= false needs a dataset made with --storage signals")
            stored = ds.subspace
            k = s.k or min(choose_k(stored.singular_values, s.energy), stored.k)
            if k > stored.k:
                raise InputError(f"subspace.k={k} exceeds the dataset's k={stored.k}")
            return stored.truncate(k)
        if not s.enabled:
            return None
        fit = ds.read(0, min(n_train, s.n_fit))
        return fit_subspace(fit.coefficients.to(torch.complex128), k=s.k or None,
                            energy=s.energy)

    def _build_network(self) -> ParameterNet:
        cfg = self.config
        k = self.subspace.k if self.subspace is not None else self.model.n_timepoints
        low, high, log = output_ranges(self.sampler.spec_dict(), self.model.bounds,
                                       cfg.net.output_margin)
        # torch.nn initializes from the global CPU generator: seed it inside a fork so that
        # the weights depend on the config's seed only and the caller's RNG state is untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derived_generator(cfg.seed, "init").initial_seed())
            net = ParameterNet(k, self.model.parameters, low, high, log, cfg.net)
        net.set_input_statistics(self.stats_inputs)
        if self.init_payload is not None:
            self._load_init_weights(net)
        return net.to(self.device)

    # ---- --init (fine-tuning) ------------------------------------------------------------
    def _read_init(self) -> dict:
        """Read the --init checkpoint and refuse one trained for another model or sequence."""
        path = self.init / "checkpoint.pt" if self.init.is_dir() else self.init
        payload = read(path)
        mine = model_to_dict(self.model)
        theirs = payload.get("model", {})
        if theirs != mine:
            what = [k for k in mine if theirs.get(k) != mine[k]] or ["structure"]
            raise InputError(f"--init: {path} was trained for another model or sequence "
                             f"({', '.join(what)} differ); give the same --model, --sequence "
                             f"and --fix")
        return payload

    def _init_subspace(self) -> Subspace | None:
        basis = basis_from_real(self.init_payload["basis"])
        if basis is None:
            return None
        stored = self.init_payload.get("subspace") or {}
        return Subspace(basis, torch.ones(basis.shape[1], dtype=torch.float64),
                        float(stored.get("energy") or 1.0))

    def _check_init_basis(self) -> None:
        theirs = basis_from_real(self.init_payload["basis"])
        mine = None if self.subspace is None else self.subspace.basis
        same = (theirs is None and mine is None) or (
            theirs is not None and mine is not None and theirs.shape == mine.shape
            and torch.allclose(theirs, mine.to(theirs.dtype), atol=1e-6))
        if not same:
            raise InputError("--init: the checkpoint's input representation (subspace basis) "
                             "differs from this run's; train from the same dataset/subspace")

    def _load_init_weights(self, net: ParameterNet) -> None:
        stored = self.init_payload["network"]["description"]
        mine = net.describe()
        what = [k for k in mine if k != "output_log" and stored.get(k) != mine[k]]
        if stored.get("output_log") != mine["output_log"]:
            what.append("output_log")
        if what:
            raise InputError(f"--init: the checkpoint's network differs from this run's "
                             f"({', '.join(what)}); give the same [net] options and training "
                             f"ranges")
        net.load_state_dict(self.init_payload["network"]["state_dict"])

    # ---- one epoch --------------------------------------------------------------------------
    def _loss(self, net: torch.nn.Module, batch: NoisyBatch, scale: torch.Tensor,
              weights: torch.Tensor) -> torch.Tensor:
        cfg = self.config.loss
        est = net(batch.signals.to(self.device)) / scale.to(torch.float32)
        target = (batch.theta.to(self.device) / scale).to(torch.float32)
        crb = batch.crb.to(self.device) / scale ** 2
        loss = losses.get(cfg.name)
        return loss.compute(losses.LossInputs(est, target, crb, weights,
                                              K=cfg.realizations if loss.repeated else 1,
                                              lam=cfg.lam, delta=cfg.delta))

    def _train_epoch(self, epoch: int) -> tuple[float, int, float]:
        cfg = self.config
        self.ddp_net.train()
        scale = self._scales()
        weights = torch.tensor(losses.mse_weights(self.model.parameters,
                                                  dict(zip(self.model.parameters,
                                                           scale.tolist())),
                                                  cfg.loss.mse_weights),
                               dtype=torch.float64, device=self.device)
        weights = (weights * scale ** 2).to(torch.float32)   # in scaled units
        repeats = cfg.loss.realizations if losses.get(cfg.loss.name).repeated else 1
        n_batches = self.source.batches_per_epoch
        bar = tqdm(total=n_batches, desc=f"epoch {epoch + 1}/{cfg.optim.epochs}", unit="batch",
                   leave=False, file=sys.stderr,
                   disable=(not self.dist.is_main) or (None if self.progress is None
                                                       else not self.progress))
        total, count, samples = 0.0, 0, 0
        t0 = time.perf_counter()
        for b, clean in enumerate(self.source.batches(epoch, self.generator)):
            noisy = make_noisy(clean, cfg.data.snr, tuple(cfg.data.m0_magnitude),
                               self.generator, repeats=repeats)
            if self.first_batch_fingerprint is None:
                self.first_batch_fingerprint = float(clean.theta.double().sum())
            loss = self._loss(self.ddp_net, noisy, scale, weights)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.ddp_net.parameters(), cfg.optim.grad_clip)
            self.optimizer.step()
            self.schedule.step()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise ComputationError(f"training loss became {value} at epoch {epoch + 1}, "
                                       f"batch {b + 1}; lower optim.lr or enable "
                                       "optim.grad_clip")
            total += value
            count += 1
            samples += len(noisy.theta)
            bar.update(1)
            if b % 10 == 0:
                bar.set_postfix(loss=f"{total / count:.4g}")
        bar.close()
        return total / max(count, 1), samples * self.dist.world, time.perf_counter() - t0

    @torch.inference_mode()
    def evaluate(self, net: torch.nn.Module) -> torch.Tensor:
        """[P] validation MSE/CRB per parameter (fixed noise)."""
        net.eval()
        out = []
        for start in range(0, len(self.val.theta), 4096):
            out.append(net(self.val.signals[start:start + 4096].to(self.device)).double().cpu())
        est = torch.cat(out)
        return losses.crb_ratio_per_parameter(est, self.val.theta.cpu(), self.val.crb.cpu())

    # ---- files ---------------------------------------------------------------------------
    def _payload(self, epoch: int, summary: dict) -> dict:
        net = self.net
        rng = {"data": self._gather_states(self.generator.get_state()),
               "torch": self._gather_states(torch.get_rng_state())}
        return {
            "model": model_to_dict(self.model),
            "sampling": self.sampler.spec_dict(),
            "basis": basis_to_real(None if self.subspace is None else self.subspace.basis),
            "subspace": self.subspace_report,
            "normalization": dict(NORMALIZATION),
            "network": {"description": net.describe(),
                        "state_dict": {k: v.detach().cpu().clone()
                                       for k, v in net.state_dict().items()}},
            "training": {"config": self.config.to_dict(), "metrics": list(self.metrics),
                         "summary": summary},
            "resume": {"epoch": epoch, "optimizer": self.optimizer.state_dict(),
                       "scheduler": self.schedule.state_dict(), "rng": rng,
                       "world_size": self.dist.world,
                       "elapsed_s": self.elapsed_before + (time.perf_counter() - self.t_start)},
        }

    def _gather_states(self, state: torch.Tensor) -> list[torch.Tensor]:
        return [torch.as_tensor(s) for s in _gather(state.clone(), self.dist)]

    def _write_files(self, epoch: int, final: bool) -> dict:
        summary = self._summary(epoch)
        payload = self._payload(epoch, summary)
        if not self.dist.is_main:
            return summary
        # RUN_DIR appears with the first complete set of files or not at all: if a write fails
        # (disk full, ...), the files and folders it would have created are removed again;
        # files of an earlier epoch stay (each is replaced atomically, so they are complete).
        names = ("checkpoint.pt", "metrics.csv", "summary.json", "loss.png")
        fresh = [self.run_dir / n for n in names if not (self.run_dir / n).exists()]
        created = cio.make_folders(self.run_dir)
        try:
            save(self.run_dir / "checkpoint.pt", payload)
            self._write_metrics_csv()
            cio.write_json(self.run_dir / "summary.json", summary)
            now = time.perf_counter()
            if final or now - self._last_plot > 30:
                from .plots.training import plot_training_curves

                plot_training_curves(self.metrics, list(self.model.parameters),
                                     self.run_dir / "loss.png", loss_name=self.config.loss.name,
                                     title=f"{self.model.name}, {self.config.loss.name} loss, "
                                           f"SNR {self.config.data.snr}")
                self._last_plot = now
        except BaseException:
            for path in fresh:
                path.unlink(missing_ok=True)
            cio.remove_created_folders(created)
            raise
        return summary

    def _write_metrics_csv(self) -> None:
        if not self.metrics:
            return
        buf = _io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(self.metrics[0]))
        writer.writeheader()
        writer.writerows(self.metrics)
        cio.write_text(self.run_dir / "metrics.csv", buf.getvalue())

    def _summary(self, epoch: int) -> dict:
        params = list(self.model.parameters)
        last = self.metrics[-1] if self.metrics else {}
        train_time = sum(m["epoch_seconds"] for m in self.metrics)
        samples = sum(m["samples"] for m in self.metrics)
        wall = self.elapsed_before + (time.perf_counter() - self.t_start)
        return {
            "model": self.model.name,
            "parameters": params,
            "fixed": dict(self.model.fixed),
            "loss": self.config.loss.name,
            "snr": self.config.data.snr,
            "snr_definition": SNR_DEFINITION,
            "mode": self.config.data.mode,
            "epochs": epoch,
            "epochs_planned": self.config.optim.epochs,
            "stopped_by": self.stopped_by,
            "val_crb_loss": {p: last.get(f"val_crb_loss_{p}") for p in params},
            "val_crb_loss_mean": last.get("val_crb_loss_mean"),
            "val_definition": "mean over the fixed validation set of (estimate - truth)^2 / CRB, "
                              "CRB of the full data at each sample's noise level",
            "val_size": self.config.data.val_size,
            "val_crb_over_prior_variance": self.prior_ratio,
            "val_singular_samples": self.val_singular,
            "best_val_crb_loss_mean": min((m["val_crb_loss_mean"] for m in self.metrics),
                                          default=None),
            "wall_time_s": wall,
            "train_time_s": train_time,
            "samples": samples,
            "samples_per_s": samples / train_time if train_time > 0 else None,
            "setup_time_s": self.setup_seconds,
            "subspace": self.subspace_report,
            "network_parameters": count_parameters(self.net),
            "world_size": self.dist.world,
            "device": str(self.device),
            "config": self.config.to_dict(),
            "init": None if self.init is None else str(self.init),
        }

    # ---- resume ----------------------------------------------------------------------------
    def _load_resume(self) -> dict | None:
        path = self.run_dir / "checkpoint.pt"
        if self.dist.is_main:
            # A run killed while writing leaves a temporary file beside the intact one.
            for tmp in cio.remove_stale_temporaries(self.run_dir):
                self._say(f"removed {tmp.name}, left by the interrupted run")
        if not path.exists():
            self._say(f"no checkpoint in {self.run_dir}: starting from scratch")
            return None
        payload = read(path)
        stored = payload["training"]["config"]
        mine = self.config.to_dict()
        if stored != mine:
            diffs = [f"{s}.{k}" for s in mine if isinstance(mine[s], dict)
                     for k in mine[s] if stored.get(s, {}).get(k) != mine[s][k]]
            if stored.get("seed") != mine.get("seed"):
                diffs.append("seed")
            raise InputError(f"--resume: the configuration differs from the checkpoint's "
                             f"({', '.join(diffs) or 'structure'}); give the same options")
        if payload["model"] != model_to_dict(self.model):
            raise InputError("--resume: the model (sequence, fixed parameters) differs from the "
                             "checkpoint's")
        if payload["resume"] is None or payload["resume"]["world_size"] != self.dist.world:
            raise InputError(f"--resume: the run used {payload['resume']['world_size']} "
                             f"process(es); resume it with the same number")
        return payload

    # ---- main ------------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train; returns the summary (also in RUN_DIR/summary.json)."""
        self.t_start = time.perf_counter()
        self.dist, self.device = init_distributed(self.device)
        self.config.validate()
        resumed = None
        if self.dist.is_main:
            ckpt = self.run_dir / "checkpoint.pt"
            if ckpt.exists() and not self.resume:
                raise InputError(f"{ckpt} exists; use --resume to continue it or choose a new "
                                 "--out directory")
            cio.check_output_folder(self.run_dir)   # a file there, no permission: fail now
        if self.resume:
            resumed = self._load_resume()
        if self.init is not None and resumed is None:
            self.init_payload = self._read_init()
        # RUN_DIR is created by the first (atomic) write, after epoch 1: bad input found during
        # set-up leaves nothing behind.
        self._setup_data()
        self.net = self._build_network()
        if self.dist.active:
            from torch.nn.parallel import DistributedDataParallel as DDP

            if self.config.net.norm == "batch":
                self.net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.net)
            self.ddp_net = DDP(self.net, device_ids=[self.device.index]
                               if self.device.type == "cuda" else None)
        else:
            self.ddp_net = self.net
        o = self.config.optim
        # foreach: one multi-tensor update per step instead of one per weight tensor — the
        # same arithmetic (bit-for-bit, tested), a fraction of the per-operation overhead.
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=o.lr,
                                          weight_decay=o.weight_decay, foreach=True)
        steps_per_epoch = self.source.batches_per_epoch
        self.schedule = WarmupCosine(self.optimizer, o.lr, o.lr_min,
                                     int(round(o.warmup_epochs * steps_per_epoch)),
                                     o.epochs * steps_per_epoch)
        self.generator = derived_generator(self.config.seed, "train-data", self.dist.rank)
        self.metrics: list[dict] = []
        self.first_batch_fingerprint: float | None = None
        self.stopped_by = "epochs"
        self._last_plot = -math.inf
        self.elapsed_before = 0.0
        start_epoch = 0
        if resumed is not None:
            r = resumed["resume"]
            self.net.load_state_dict(resumed["network"]["state_dict"])
            self.optimizer.load_state_dict(r["optimizer"])
            self.schedule.load_state_dict(r["scheduler"])
            self.generator.set_state(r["rng"]["data"][self.dist.rank])
            torch.set_rng_state(r["rng"]["torch"][self.dist.rank])
            self.metrics = list(resumed["training"]["metrics"])
            start_epoch = int(r["epoch"])
            self.elapsed_before = float(r["elapsed_s"])
            self.subspace_report = resumed["subspace"]
            self._say(f"resuming {self.run_dir} after epoch {start_epoch}")
        else:
            self.subspace_report = self._subspace_report()
        self.setup_seconds = time.perf_counter() - self.t_start
        if self.dist.is_main:
            self._announce()

        summary = self._summary(start_epoch)
        epoch = start_epoch
        while epoch < o.epochs:
            train_loss, samples, seconds = self._train_epoch(epoch)
            epoch += 1
            stop = False
            if self.dist.is_main:
                val = self.evaluate(self.net).tolist()
                row = {"epoch": epoch, "train_loss": train_loss,
                       "val_crb_loss_mean": sum(val) / len(val)}
                row.update({f"val_crb_loss_{p}": v for p, v in zip(self.model.parameters, val)})
                elapsed = self.elapsed_before + (time.perf_counter() - self.t_start)
                row.update({"lr": self.optimizer.param_groups[0]["lr"], "samples": samples,
                            "epoch_seconds": seconds, "samples_per_s": samples / seconds,
                            "elapsed_seconds": elapsed})
                self.metrics.append(row)
                self._say(self._epoch_line(row))
                if self.max_minutes is not None and \
                        time.perf_counter() - self.t_start >= 60 * self.max_minutes:
                    stop = epoch < o.epochs
            stop = _broadcast_flag(stop, self.dist, self.device)
            if stop:
                self.stopped_by = "time"
            summary = self._write_files(epoch, final=stop or epoch == o.epochs)
            if stop:
                break
        if start_epoch == o.epochs:
            summary = self._write_files(epoch, final=True)
        if self.dist.active:
            fingerprints = _gather(self.first_batch_fingerprint, self.dist)
            weights = _gather(state_fingerprint(self.net.state_dict()), self.dist)
            summary["distributed"] = {"world_size": self.dist.world,
                                      "backend": self.dist.backend,
                                      "first_batch_theta_sum": fingerprints,
                                      "weights_fingerprint": weights}
            if self.dist.is_main:
                cio.write_json(self.run_dir / "summary.json", summary)
            dist.barrier()
        return summary

    def _subspace_report(self) -> dict:
        s, cfg = self.subspace, self.config
        if s is None:
            return {"k": None, "energy": 1.0, "crb_inflation": None}
        report: dict[str, Any] = {"k": s.k, "energy": s.energy, "n_timepoints":
                                  self.model.n_timepoints, "crb_inflation": None,
                                  "basis": basis_record(s.basis), "source": s.source}
        if cfg.subspace.n_check and self.dist.is_main:
            theta = self.sampler.sample(cfg.subspace.n_check,
                                        derived_generator(cfg.seed, "crb-check"))
            report["crb_inflation"] = crb_inflation(self.model, theta, s.basis)
            report["crb_inflation_definition"] = ("median over the training distribution of "
                                                  "CRB(compressed) / CRB(full), per parameter")
        return report

    def _announce(self) -> None:
        s = self.subspace_report
        cfg = self.config
        src = (f"offline {cfg.data.dataset}" if cfg.data.mode == "offline" else
               f"online, pool {cfg.data.pool_size}" if cfg.data.pool_size else "online, fresh")
        comp = "none" if s["k"] is None else f"k={s['k']} of {self.model.n_timepoints}"
        if s.get("crb_inflation"):
            comp += " (CRB ×" + ", ".join(f"{p} {v:.4f}" for p, v in
                                         s["crb_inflation"].items()) + ")"
        self._say(f"crbnet train: {self.model.name} [{', '.join(self.model.parameters)}], "
                  f"loss {cfg.loss.name}, SNR {cfg.data.snr} (|M0|/sigma), data {src}, "
                  f"subspace {comp}, network {count_parameters(self.net)} weights, "
                  f"{self.dist.world} process(es), setup {self.setup_seconds:.1f} s")

    def _epoch_line(self, row: dict) -> str:
        per = "  ".join(f"{p} {row[f'val_crb_loss_{p}']:.3g}" for p in self.model.parameters)
        return (f"epoch {row['epoch']:>3}/{self.config.optim.epochs}  train {row['train_loss']:.4g}"
                f"  val MSE/CRB mean {row['val_crb_loss_mean']:.4g} ({per})  "
                f"{row['epoch_seconds']:.1f} s, {row['samples_per_s']:.0f} samples/s")


def train(model: SignalModel, config: TrainConfig, run_dir: str | Path, **kwargs: Any) -> dict:
    """Convenience wrapper: ``Trainer(model, config, run_dir, **kwargs).fit()``."""
    return Trainer(model, config, run_dir, **kwargs).fit()


__all__ = ["TrainConfig", "DataConfig", "SubspaceConfig", "OptimConfig", "LossConfig",
           "MODEL_DEFAULTS", "Trainer", "train", "build_config", "read_config_file",
           "parse_set_option", "WarmupCosine"]
