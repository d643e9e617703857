"""Bad input gets a clear error, and nothing is lost silently."""

import re
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_implicit as ki
from keras_implicit import backward, solvers
from keras_implicit.layers import BackwardFPI, DenseCell, ForwardFPI

RECEIVED = re.compile(r"Received: .+")


def _raises(fn, *match):
    with pytest.raises(ValueError) as err:
        fn()
    message = str(err.value)
    assert RECEIVED.search(message), message
    for m in match:
        assert m in message, message
    return message


@pytest.mark.parametrize("tol", [0, -1e-3, "1e-4", None])
def test_bad_tol(tol):
    _raises(lambda: ki.fixed_point(tf.cos, tf.zeros([1, 1]), tol=tol), "tol")
    _raises(lambda: ForwardFPI(DenseCell(3), tol=tol), "tol")


@pytest.mark.parametrize("max_iter", [0, -5, 2.5])
def test_bad_max_iter(max_iter):
    _raises(lambda: ki.fixed_point(tf.cos, tf.zeros([1, 1]), max_iter=max_iter), "max_iter")
    _raises(lambda: BackwardFPI(DenseCell(3), max_iter=max_iter), "max_iter")


@pytest.mark.parametrize("memory", [0, -1, 1.5])
def test_bad_memory(memory):
    _raises(lambda: solvers.Anderson(memory=memory), "memory")
    _raises(lambda: solvers.Broyden(memory=memory), "memory")


def test_bad_hyperparameters():
    _raises(lambda: solvers.Anderson(ridge=-1.0), "ridge")
    _raises(lambda: solvers.Anderson(ridge=0.0), "ridge")
    _raises(lambda: solvers.FixedPointIteration(damping=0.0), "damping")
    _raises(lambda: solvers.FixedPointIteration(damping=1.5), "damping")
    _raises(lambda: backward.Phantom(steps=0), "steps")
    _raises(lambda: backward.Phantom(damping=2.0), "damping")
    _raises(lambda: backward.Implicit(tol=0.0), "tol")
    _raises(lambda: ki.fixed_point(tf.cos, tf.zeros([1, 1]), stop_mode="relative"), "stop_mode")
    _raises(lambda: ki.fixed_point(tf.cos, tf.zeros([1, 1]), on_failure="explode"), "on_failure")
    _raises(lambda: DenseCell(0), "units")
    _raises(lambda: DenseCell(3, normalization="batch"), "normalization")


def test_numpy_numbers_are_numbers():
    # hyperparameters read from numpy (a grid, a config file) are not Python numbers
    assert solvers.FixedPointIteration(damping=np.float32(0.5)).damping == 0.5
    assert backward.Phantom(damping=np.float64(0.5)).damping == 0.5

    class Cell(keras.layers.Layer):
        state_size = np.int64(3)

        def call(self, z, x):
            return 0.5 * tf.tanh(z + x)

    layer = ForwardFPI(Cell())
    assert layer.state_shape == (3,) and type(layer.state_shape[0]) is int
    assert layer(tf.ones([2, 3])).shape == (2, 3)


def test_unknown_identifiers():
    _raises(lambda: solvers.get("newton"), "newton", "anderson")
    _raises(lambda: backward.get("magic"), "magic", "implicit")
    _raises(lambda: ForwardFPI(DenseCell(3), solver="nope"), "nope")
    _raises(lambda: ForwardFPI(DenseCell(3), backward="nope"), "nope")
    _raises(lambda: solvers.deserialize({"class_name": "Nope", "config": {}}), "Nope")


def test_cell_without_state_size():
    _raises(lambda: ForwardFPI(keras.layers.Dense(3)), "state_size")


def test_cell_with_wrong_output_shape():
    class Bad(keras.layers.Layer):
        state_size = 4

        def call(self, z, x):
            return tf.concat([z, z], axis=1)

    msg = _raises(lambda: ForwardFPI(Bad())(tf.ones([2, 3])), "state_size")
    assert "(2, 8)" in msg


def test_wrong_input_rank_names_the_shape():
    msg = _raises(lambda: ForwardFPI(DenseCell(3))(tf.ones([2, 3, 4])), "x.shape=(2, 3, 4)")
    assert "(batch, features)" in msg


def test_wrong_initial_state_shape():
    layer = ForwardFPI(DenseCell(3))
    _raises(lambda: layer(tf.ones([2, 5]), initial_state=tf.zeros([2, 4])), "initial_state.shape=(2, 4)")


def test_backward_fpi_wrong_shapes():
    _raises(lambda: BackwardFPI(DenseCell(3))((tf.ones([2, 5]), tf.ones([2, 4]), tf.ones([2, 3]))), "z_star.shape=(2, 4)")


def _nonconvergent_layer(**kwargs):
    # A linear cell whose W is orthogonal (norm 1) never contracts: tol is out of reach.
    cell = DenseCell(4, activation="linear", normalization=None, use_bias=False,
                     recurrent_initializer=keras.initializers.Orthogonal(1.0))
    return ForwardFPI(cell, solver="fixed_point", tol=1e-8, max_iter=20, return_info=True, **kwargs)


def test_non_convergence_warns_by_default_in_eager_mode():
    layer = _nonconvergent_layer()
    with pytest.warns(UserWarning, match=r"max_iter reached after 20 iterations.*largest residual"):
        z, info = layer(tf.ones([3, 2]))
    assert int(info.status) == ki.MAX_ITER_REACHED
    assert not info.converged.numpy().any()


def test_non_convergence_can_raise():
    layer = _nonconvergent_layer(on_failure="raise")
    with pytest.raises(ki.ConvergenceError, match="max_iter reached after 20 iterations") as err:
        layer(tf.ones([3, 2]))
    assert "largest residual" in str(err.value)
    # the functional form keeps the SolverInfo on the exception
    with pytest.raises(ki.ConvergenceError) as err:
        ki.fixed_point(lambda z: z + 1.0, tf.zeros([2, 1]), max_iter=7, on_failure="raise")
    assert int(err.value.info.status) == ki.MAX_ITER_REACHED and int(err.value.info.iterations) == 7


def test_non_convergence_is_reported_in_graph_mode_without_raising():
    layer = _nonconvergent_layer(on_failure="raise")
    z, info = tf.function(layer)(tf.ones([3, 2]))
    assert int(info.status) == ki.MAX_ITER_REACHED


def test_nan_inputs_are_guarded_and_reported():
    layer = ForwardFPI(DenseCell(4, activation="linear"), return_info=True, max_iter=500)
    x = np.ones((3, 2), "float32")
    x[1, 0] = np.nan
    with pytest.warns(UserWarning, match="non-finite"):
        z, info = layer(tf.constant(x))
    assert int(info.status) == ki.NON_FINITE
    assert int(info.iterations) < 500  # no hang: the finite samples converged, the loop stopped
    assert info.converged.numpy().tolist() == [True, False, True]
    assert np.isfinite(z.numpy()[[0, 2]]).all()


def test_no_warning_when_converged():
    layer = ForwardFPI(DenseCell(4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer(tf.ones([3, 2]))
