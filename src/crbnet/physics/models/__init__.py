"""Signal models. ``get(name, sequence=None)`` returns a configured model.

``sequence`` is a sequence object, a path (JSON for every model, control-point CSV for
``mt_hybrid_state``, MATLAB ``.mat`` for models that play segmented sequences; the kind is
chosen among the model's ``accepted_sequence_kinds()``) or None for the model's default.

Where models come from (:func:`resolve`), in this order:

* the built-in models (:data:`REGISTRY`);
* installed plugins: entry points in the group ``crbnet.models`` whose name is the model name
  and whose object is a :class:`SignalModel` subclass (``[project.entry-points."crbnet.models"]``
  in the plugin's pyproject.toml);
* ``FILE.py:CLASS`` — a class in a Python file (path absolute or relative to the working
  directory);
* ``package.module:CLASS`` — a class in an importable module.

Writing a model: docs/models.md.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import sys
from pathlib import Path
from typing import Mapping

from crbnet.physics import sequences as seqs
from crbnet.physics.models.analytic import IRT1, T2Decay
from crbnet.physics.models.base import ModelError, ModelOption, ParameterSpec, SignalModel
from crbnet.physics.models.fisp_mrf import FISPMRF
from crbnet.physics.models.mt_generalized_bloch import MTGeneralizedBloch
from crbnet.physics.models.mt_hybrid_state import MTHybridState

ENTRY_POINT_GROUP = "crbnet.models"

#: The built-in models by name.
REGISTRY: dict[str, type[SignalModel]] = {
    cls.name: cls for cls in (MTHybridState, MTGeneralizedBloch, FISPMRF, T2Decay, IRT1)
}

def _plugins() -> dict[str, importlib.metadata.EntryPoint]:
    """Installed plugin entry points by model name (not loaded yet)."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
            if ep.name not in REGISTRY}


def names() -> list[str]:
    """Built-in and installed plugin model names (what ``--model`` lists)."""
    return list(REGISTRY) + sorted(_plugins())


def _is_file_spec(where: str) -> bool:
    return where.endswith(".py") or "/" in where or "\\" in where


def _import_file(where: str) -> object:
    """Import a Python file once per absolute path, as a module of a private name."""
    path = Path(where).expanduser().resolve()
    if not path.is_file():
        raise ModelError(f"model file not found: {where}")
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    module_name = f"crbnet_user_model_{path.stem}_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ModelError(f"cannot import model file {where}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise ModelError(f"importing {where} failed: {type(exc).__name__}: {exc}") from exc
    return module


def _import_module(where: str) -> object:
    try:
        return importlib.import_module(where)
    except ImportError as exc:
        raise ModelError(f"cannot import module {where!r} for the model: {exc}") from None


def _checked(obj: object, spec: str) -> type[SignalModel]:
    if not (isinstance(obj, type) and issubclass(obj, SignalModel)) or not obj.name:
        raise ModelError(f"{spec} is not a SignalModel subclass with a name")
    return obj


def resolve(spec: str) -> type[SignalModel]:
    """The model class that ``spec`` names: a built-in or plugin model name, ``FILE.py:CLASS``
    or ``package.module:CLASS``. Raises :class:`ModelError` (one line) when it cannot."""
    if spec in REGISTRY:
        return REGISTRY[spec]
    plugins = _plugins()
    if spec in plugins:
        try:
            cls = _checked(plugins[spec].load(), f"plugin {spec!r}")
        except ModelError:
            raise
        except Exception as exc:
            raise ModelError(f"loading plugin model {spec!r} failed: {exc}") from None
        return cls
    where, sep, attr = spec.rpartition(":")
    if not sep or not where or not attr.isidentifier():
        raise ModelError(f"unknown model {spec!r}; available: {', '.join(names())}, or "
                         f"FILE.py:CLASS, or package.module:CLASS")
    module = _import_file(where) if _is_file_spec(where) else _import_module(where)
    if not hasattr(module, attr):
        raise ModelError(f"{where} has no class {attr!r}")
    return _checked(getattr(module, attr), spec)


def source_of(model: SignalModel) -> str:
    """How to name ``model``'s class for :func:`resolve` (recorded in checkpoints and datasets
    so that they can import it again): its name for a built-in, else the spec :func:`get` was
    given, else ``module:CLASS``."""
    cls = type(model)
    if REGISTRY.get(cls.name) is cls:
        return cls.name
    return getattr(model, "model_source", None) or f"{cls.__module__}:{cls.__qualname__}"


def get(name: str, sequence: seqs.Sequence | str | Path | None = None,
        fixed: Mapping[str, float] | None = None, **options) -> SignalModel:
    """Build model ``name`` (anything :func:`resolve` accepts) with an optional sequence
    (object or file path).

    ``fixed`` maps parameter names to values held fixed (not estimated); None keeps the model's
    default (B1 = 1 where the model has B1); ``{}`` estimates every parameter. ``options`` are
    the model's declared options (:attr:`SignalModel.options`).
    """
    cls = resolve(name)
    declared = {o.name for o in cls.options}
    unknown = set(options) - declared
    if unknown:
        raise ModelError(f"model {cls.name!r} has no option(s) {', '.join(sorted(unknown))}; "
                         f"declared: {', '.join(sorted(declared)) or 'none'}")
    if isinstance(sequence, (str, Path)):
        sequence = seqs.load_for(sequence, cls.accepted_sequence_kinds())
    model = cls(sequence=sequence, fixed=fixed, **options)
    if REGISTRY.get(name) is not cls:
        model.model_source = name
    return model


def same_model(a: SignalModel, b: SignalModel) -> bool:
    """Same model name, estimated and fixed parameters, and sequence."""
    return (a.name == b.name and tuple(a.parameters) == tuple(b.parameters)
            and dict(a.fixed) == dict(b.fixed)
            and seqs.sequence_hash(a.sequence) == seqs.sequence_hash(b.sequence))



__all__ = ["get", "same_model", "names", "resolve", "source_of", "REGISTRY", "ENTRY_POINT_GROUP",
           "SignalModel", "ParameterSpec", "ModelOption", "ModelError",
           "MTHybridState", "MTGeneralizedBloch", "FISPMRF", "T2Decay", "IRT1"]
