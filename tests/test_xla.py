"""XLA-compiled solver loops give every layer family the same output and
gradients as uncompiled ones (the rest of the suite runs them uncompiled; see
`conftest.py`), and `keras_implicit.config.set_jit_loops` switches them."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_implicit as ki
from tests import checks
from tests.test_harness import CASES


def _compiling_cases():
    # layers whose solver compiles its loop (the splitting and Halpern solvers do not;
    # the exact linear and single-index solves have no loop)
    def loops(layer):
        return layer.solver.compile_loop and not getattr(layer, "exact", False)

    return sorted(name for name, case in CASES.items() if case[2] == "equilibrium" and loops(case[0]()))


def test_the_comparison_covers_the_families():
    assert {"ForwardFPI", "FPINetwork", "FPIGradientDescent", "GaussianEquilibrium",
            "MultiBranchEquilibrium"} <= set(_compiling_cases())


@pytest.mark.xla
@pytest.mark.parametrize("name", _compiling_cases())
def test_compiled_loops_match_uncompiled_loops(name):
    make, x_shape = CASES[name][:2]
    keras.utils.set_random_seed(0)
    layer = make()
    x = tf.constant(np.random.default_rng(1).standard_normal(x_shape))
    y = layer(x)
    r = tf.constant(np.random.default_rng(2).standard_normal(y.shape))

    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(tf.sin(y) * r)
        return [y] + tape.gradient(loss, [x] + layer.trainable_variables)

    results = {}
    for enabled in (True, False):
        ki.config.set_jit_loops(enabled)
        fn = tf.function(step)
        compiled = checks.xla_functions(fn.get_concrete_function(x))
        # forward loop (and the adjoint's for implicit backward modes) compiled only when enabled
        assert bool(compiled) == enabled, compiled
        results[enabled] = fn(x)
    for a, b in zip(results[True], results[False]):
        if a is None:
            assert b is None
        else:
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-9, atol=1e-11)


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
