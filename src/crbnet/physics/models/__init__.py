"""Signal models. ``get(name, sequence=None)`` returns a configured model.

``sequence`` is a sequence object, a path (JSON for every model, control-point CSV for
``mt_hybrid_state``, MATLAB ``.mat`` for models that play segmented sequences; the kind is
chosen among the model's ``accepted_sequence_kinds()``) or None for the model's default.

Where models come from (:func:`resolve`, through the one plugin mechanism of
:mod:`crbnet.plugins`), in this order:

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

from pathlib import Path
from typing import Mapping

from crbnet import plugins
from crbnet.physics import sequences as seqs
from crbnet.physics.models.analytic import IRT1, T2Decay
from crbnet.physics.models.base import ModelError, ModelOption, ParameterSpec, SignalModel
from crbnet.physics.models.fisp_mrf import FISPMRF
from crbnet.physics.models.mt_generalized_bloch import MTGeneralizedBloch
from crbnet.physics.models.mt_hybrid_state import MTHybridState

ENTRY_POINT_GROUP = plugins.GROUPS["model"]

#: The built-in models by name.
REGISTRY: dict[str, type[SignalModel]] = {
    cls.name: cls for cls in (MTHybridState, MTGeneralizedBloch, FISPMRF, T2Decay, IRT1)
}

def _adopt(obj: object, spec: str) -> type[SignalModel]:
    """A loaded plugin object as a model class (a named :class:`SignalModel` subclass)."""
    if not (isinstance(obj, type) and issubclass(obj, SignalModel)) or not obj.name:
        raise ModelError(f"{spec} is not a SignalModel subclass with a name")
    return obj


#: The models' extension point (:mod:`crbnet.plugins`): built-ins, entry points in
#: ``crbnet.models``, ``FILE.py:CLASS``, ``package.module:CLASS``.
PLUGINS = plugins.ExtensionPoint("model", ENTRY_POINT_GROUP, lambda: REGISTRY, _adopt,
                                 error=ModelError, form="FILE.py:CLASS, or package.module:CLASS",
                                 item="class")


def names() -> list[str]:
    """Built-in and installed plugin model names (what ``--model`` lists)."""
    return PLUGINS.names()


def resolve(spec: str) -> type[SignalModel]:
    """The model class that ``spec`` names: a built-in or plugin model name, ``FILE.py:CLASS``
    or ``package.module:CLASS``. Raises :class:`ModelError` (one line) when it cannot."""
    return PLUGINS.resolve(spec)


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
