"""Top-level facades: crbnet.models and crbnet.sequences are the public names and stay silent;
the deprecated ones (baselines, evaluate, apply, phantom, train) still give the same objects
but warn, naming the new path."""

import importlib
import warnings

import pytest

DEPRECATED = [
    ("crbnet.baselines", "get", "crbnet.estimators"),
    ("crbnet.baselines", "NLLSEstimator", "crbnet.estimators"),
    ("crbnet.evaluate", "evaluate", "crbnet.assessment.evaluate"),
    ("crbnet.evaluate", "make_grid", "crbnet.assessment.evaluate"),
    ("crbnet.apply", "apply_to_volume", "crbnet.imaging.apply"),
    ("crbnet.phantom", "make_phantom", "crbnet.imaging.phantom"),
    ("crbnet.phantom", "tissue_table", "crbnet.imaging.phantom"),
    ("crbnet.train", "Trainer", "crbnet.learning.trainer"),
    ("crbnet.train", "build_config", "crbnet.learning.training_config"),
    ("crbnet.train", "WarmupCosine", "crbnet.learning.schedule"),
    ("crbnet.train", "DistInfo", "crbnet.learning.distributed"),
]


@pytest.mark.parametrize("old, name, new", DEPRECATED)
def test_deprecated_name_warns_with_the_new_path_and_is_the_same_object(old, name, new):
    module = importlib.import_module(old)
    with pytest.warns(DeprecationWarning, match=rf"{old}\.{name} is deprecated; use "
                                                rf"{new}\.{name}"):
        value = getattr(module, name)
    assert value is getattr(importlib.import_module(new), name)


def test_from_import_warns_too():
    with pytest.warns(DeprecationWarning, match=r"crbnet\.baselines\.get .*crbnet\.estimators"):
        from crbnet.baselines import get
    from crbnet.estimators import get as new_get
    assert get is new_get


def test_star_import_forwards_every_public_name():
    namespace: dict = {}
    with pytest.warns(DeprecationWarning):
        exec("from crbnet.phantom import *", namespace)
    phantom = importlib.import_module("crbnet.imaging.phantom")
    for name in phantom.__all__:
        assert namespace[name] is getattr(phantom, name)


def test_unknown_and_private_names_are_attribute_errors():
    module = importlib.import_module("crbnet.apply")
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        module.no_such_name
    with pytest.raises(AttributeError):
        module._private
    assert "apply_to_volume" in dir(module)


def test_model_defaults_of_the_old_train_module():
    module = importlib.import_module("crbnet.train")
    with pytest.warns(DeprecationWarning, match="model_training_defaults"):
        defaults = module.MODEL_DEFAULTS
    from crbnet.learning.training_config import model_training_defaults
    assert defaults["t2_decay"] == model_training_defaults("t2_decay")
    with pytest.raises(TypeError):
        defaults["t2_decay"] = {}                          # read-only, as before


@pytest.mark.parametrize("module, name", [("crbnet.models", "get"),
                                          ("crbnet.models", "SignalModel"),
                                          ("crbnet.sequences", "default_mt_sequence"),
                                          ("crbnet", "load"), ("crbnet", "crb")])
def test_kept_public_names_do_not_warn(module, name):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert getattr(importlib.import_module(module), name) is not None
