"""The docstring examples run and print what they claim."""

import doctest
import importlib

import pytest

MODULES = [
    "keras_implicit.fixed_point",
    "keras_implicit.operators",
    "keras_implicit.solvers.fixed_point_iteration",
    "keras_implicit.layers.monotone",
    "keras_implicit.layers.lipschitz",
    "keras_implicit.layers.explicit",
    "keras_implicit.lipschitz",
    "keras_implicit.robustness",
    "keras_implicit.autodiff",
    "keras_implicit.layers.fpi_models",
    "keras_implicit.tuning",
    "keras_implicit.callbacks",
    "keras_implicit.layers.opteq",
    "keras_implicit.layers.geq",
    "keras_implicit.layers.multibranch",
    "keras_implicit.config",
    "keras_implicit.jiio",
    "keras_implicit.layers.input_optimization",
    "keras_implicit.backward.phantom",
    "keras_implicit.layers.single_index",
    "keras_implicit.dynamics",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
