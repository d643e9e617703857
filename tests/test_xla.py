"""XLA gives every layer family the same output and gradients as plain graphs.

Families whose solver compiles its own loop (a nested `tf.function(jit_compile=True)`,
on by default in graph mode; the rest of the suite runs those loops uncompiled,
see `conftest.py`) are checked with compiled and uncompiled loops; the others
(splitting and exact solves, explicit layers) with a whole training step compiled
by `jit_compile=True`, what Keras picks by default on a GPU (the FFT resolvents
failed there: XLA has no complex `MatrixInverse`). A whole step of a loop family
is compiled in `test_layers.py::test_trains_on_digits_to_95_percent[True]`.
`keras_implicit.config.set_jit_loops` switches the loops."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_implicit as ki
from tests import checks
from tests.test_harness import CASES, _call


def _loops(layer):
    # the splitting and Halpern solvers do not compile their loop; the exact
    # linear and single-index solves have none
    return getattr(layer, "solver", None) is not None and layer.solver.compile_loop and not getattr(
        layer, "exact", False)


def _compiling_cases():
    return sorted(name for name, case in CASES.items() if case[2] == "equilibrium" and _loops(case[0]()))


def _whole_step_cases():
    loops = set(_compiling_cases())
    return sorted(name for name, case in CASES.items() if case[2] in ("equilibrium", "explicit") and name not in loops)


def test_the_comparison_covers_the_families():
    assert {"ForwardFPI", "FPINetwork", "FPIGradientDescent", "GaussianEquilibrium",
            "MultiBranchEquilibrium"} <= set(_compiling_cases())
    assert {"MonotoneDense", "MonotoneConv2D", "MonotoneMultiscale", "LipschitzDense", "LipschitzConv2D",
            "SLLConv2D", "LinearDEQ", "SingleIndexDEQ"} <= set(_whole_step_cases())


def _step(layer, x):
    y = _call(layer, x)
    r = tf.constant(np.random.default_rng(2).standard_normal(y.shape))

    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = _call(layer, x)
            loss = tf.reduce_sum(tf.sin(y) * r)
        return [y] + tape.gradient(loss, [x] + layer.trainable_variables)

    return step


def _assert_same(results, reference, rtol=1e-9):
    for a, b in zip(results, reference):
        if a is None:
            assert b is None
        else:
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=rtol, atol=1e-11)


def _case(name):
    make, x_shape = CASES[name][:2]
    keras.utils.set_random_seed(0)
    return make(), tf.constant(np.random.default_rng(1).standard_normal(x_shape))


@pytest.mark.xla
@pytest.mark.parametrize("name", _compiling_cases())
def test_compiled_loops_match_uncompiled_loops(name):
    layer, x = _case(name)
    step = _step(layer, x)
    results = {}
    for enabled in (True, False):
        ki.config.set_jit_loops(enabled)
        fn = tf.function(step)
        compiled = checks.xla_functions(fn.get_concrete_function(x))
        # forward loop (and the adjoint's for implicit backward modes) compiled only when enabled
        assert bool(compiled) == enabled, compiled
        results[enabled] = fn(x)
    _assert_same(results[True], results[False])


# XLA's SVD (the spectral norms of CPLDense and OptEqDense) is iterative, with
# a tolerance near 1e-7 relative also in float64
_SVD_RTOL = {"CPLDense": 1e-5, "OptEqDense": 1e-5}


@pytest.mark.xla
@pytest.mark.parametrize("name", _whole_step_cases())
def test_a_whole_step_compiled_by_xla_matches_the_graph(name):
    layer, x = _case(name)
    step = _step(layer, x)
    reference = tf.function(step)(x)
    _assert_same(tf.function(step, jit_compile=True)(x), reference, rtol=_SVD_RTOL.get(name, 1e-9))


def test_set_jit_loops_rejects_a_non_bool():
    with pytest.raises(TypeError, match="Received: enabled='no'"):
        ki.config.set_jit_loops("no")


def test_the_environment_variable_sets_the_initial_value(monkeypatch):
    from keras_implicit import config

    monkeypatch.setenv("KERAS_IMPLICIT_JIT_LOOPS", "0")
    assert config._from_env() is False
    monkeypatch.setenv("KERAS_IMPLICIT_JIT_LOOPS", "True")
    assert config._from_env() is True
    monkeypatch.setenv("KERAS_IMPLICIT_JIT_LOOPS", "yes")
    with pytest.raises(ValueError, match="Received: KERAS_IMPLICIT_JIT_LOOPS='yes'"):
        config._from_env()
