"""GEQ: the output minimizes the Gaussian-kernel objective; gamma -> 0 is OptEq."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_implicit as ki
from keras_implicit.layers import GaussianEquilibrium, OptEqDense
from tests import checks
from tests.test_opteq import _lbfgs_minimizer

X = np.random.default_rng(0).standard_normal((4, 5))


def _layer(activation="relu", patch_size=None, prior=None, gamma="auto", **kwargs):
    keras.utils.set_random_seed(0)
    kwargs = {"max_norm": 0.9, "tol": 1e-13, "max_iter": 500, **kwargs}
    layer = GaussianEquilibrium(7, features=8, activation=activation, patch_size=patch_size, prior=prior,
                                gamma=gamma, dtype="float64", **kwargs)
    layer(X)
    rng = np.random.default_rng(1)
    layer.cell.V.assign(rng.standard_normal((8, 7)))  # ||V|| > 1: the normalization acts
    layer.cell.kernel.assign(rng.standard_normal((5, 8)))
    layer.cell.bias.assign(0.5 * rng.standard_normal(7))
    return layer


def _smooth_part(layer, x, z):
    """E minus the activation's (and prior's) f, by autodiff-able ops."""
    cell = layer.cell
    gamma = float(cell.gamma)
    u = cell.patch_distances(cell.residual(x, z))
    return (0.5 * tf.reduce_sum(tf.square(z), -1) - tf.reduce_sum(cell.bias * z, -1)
            + tf.reduce_sum(tf.math.expm1(-gamma * u), -1) / (2 * gamma))


def _prox_gradient_residual(layer, x, z, step=1.0):
    """`|z - prox_{step f}(z - step grad h(z))|`, h the smooth part by autodiff: zero
    exactly at a minimizer of E (the first-order condition, independent of the
    layer's hand-derived map)."""
    z = tf.constant(z)
    with tf.GradientTape() as tape:
        tape.watch(z)
        h = tf.reduce_sum(_smooth_part(layer, x, z))
    return np.abs(layer.cell.prox(z - step * tape.gradient(h, z), step).numpy() - z.numpy()).max()


@pytest.mark.parametrize("activation,prior,patch_size", [
    ("relu", None, None), ("relu", None, 2), ("leaky_relu", None, 2), ("soft_threshold", None, None),
    ("identity", None, 4), ("tanh", None, None), ("sigmoid", None, 2), ("relu", "sparse", 2), ("tanh", "box", None)])
def test_equilibrium_is_a_stationary_point_and_the_minimizer(activation, prior, patch_size):
    layer = _layer(activation, patch_size, prior, return_info=True)
    z, info = layer(X)
    assert int(info.status) == ki.CONVERGED
    z = z.numpy()
    assert _prox_gradient_residual(layer, tf.constant(X), z) < 1e-8
    if prior is None and activation in ("leaky_relu", "identity", "tanh", "sigmoid"):
        np.testing.assert_allclose(z, _lbfgs_minimizer(layer, X), atol=1e-6)
    e = layer.objective(X, z).numpy()
    rng = np.random.default_rng(2)
    for _ in range(20):  # convex: no nearby point is lower
        assert np.all(layer.objective(X, z + 1e-4 * rng.standard_normal(z.shape)).numpy() >= e - 1e-12)


@pytest.mark.parametrize("activation,patch_size", [("relu", 2), ("tanh", None)])
def test_objective_decreases_along_the_forward_iteration(activation, patch_size):
    layer = _layer(activation, patch_size, gamma=0.02)  # gamma ||r||^2 about 1: the kernel matters
    x = tf.constant(X)
    z = tf.zeros([4, 7], tf.float64)
    values = []
    for _ in range(30):
        z = layer.cell(z, x)
        values.append(layer.objective(x, z).numpy())
    assert np.all(np.diff(values, axis=0) <= 1e-12)
    assert np.all(values[-1] < values[0])


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_small_gamma_is_opteq_with_injection_b_minus_wt_u_x(activation):
    geq = _layer(activation, gamma=1e-10)
    w = geq.cell.weight().numpy()  # 8 x 7
    # OptEq of width 7 with W^T W equal to GEQ's: W' = (W^T W)^{1/2}.
    evals, evecs = np.linalg.eigh(w.T @ w)
    root = evecs @ np.diag(np.sqrt(np.clip(evals, 0, None))) @ evecs.T
    opteq = OptEqDense(7, activation=activation, max_norm=0.9, tol=1e-13, max_iter=1000, dtype="float64")
    opteq(X)
    opteq.cell.V.assign(root)
    opteq.cell.kernel.assign(-geq.cell.kernel.numpy() @ w)  # row form of -W^T U x
    opteq.cell.bias.assign(geq.cell.bias.numpy())
    np.testing.assert_allclose(opteq.cell.implicit_weight().numpy(), w.T @ w, atol=1e-12)
    z = geq(X).numpy()
    np.testing.assert_allclose(z, opteq(X).numpy(), atol=1e-6)
    # E_geq = E_opteq - ||U x||^2 / 2 as gamma -> 0
    ux = X @ geq.cell.kernel.numpy()
    np.testing.assert_allclose(geq.objective(X, z).numpy(),
                               opteq.objective(X, z).numpy() - 0.5 * np.sum(ux**2, -1), atol=1e-6)


def test_gamma_auto_is_set_once_from_the_first_batch(tmp_path):
    layer = _layer("relu", patch_size=2)
    # `_layer` built the layer on X: gamma = 0.2 / min positive ||(U x)_p||^2 of that first call,
    # with the initializer's U (since replaced).
    keras.utils.set_random_seed(0)
    fresh = GaussianEquilibrium(7, features=8, patch_size=2, dtype="float64")
    fresh(X)
    ux = X @ fresh.cell.kernel.numpy()
    expected = 0.2 / np.min(np.sum(ux.reshape(4, 4, 2) ** 2, -1))
    np.testing.assert_allclose(float(fresh.cell.gamma), expected, rtol=1e-12)
    fresh(10 * X)  # a later batch changes nothing
    np.testing.assert_allclose(float(fresh.cell.gamma), expected, rtol=1e-12)
    # graph mode (fit): set inside the first train step, then kept; saved with the model
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5,))
    model = keras.Sequential([inputs, GaussianEquilibrium(6, patch_size=3, name="geq"), keras.layers.Dense(2)])
    assert float(model.get_layer("geq").cell.gamma) == 0.0
    y = np.random.default_rng(3).integers(0, 2, 16)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(np.tile(X[:1], (16, 1)).astype("float32"), y, batch_size=8, epochs=1, verbose=0)
    gamma = float(model.get_layer("geq").cell.gamma)
    assert gamma > 0
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert float(loaded.get_layer("geq").cell.gamma) == pytest.approx(gamma)
    assert layer.get_config()["gamma"] == "auto"


def test_gradients_match_finite_differences():
    layer = _layer("tanh", patch_size=2, tol=1e-12)
    x = tf.constant(X)
    r = tf.constant(np.random.default_rng(5).standard_normal((4, 7)))
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(tf.sin(layer(x)) * r)
    grads = tape.gradient(loss, [x] + layer.trainable_variables)
    rng = np.random.default_rng(6)
    checks.check_input_fd(lambda t: tf.reduce_sum(tf.sin(layer(t)) * r), x, grads[0], rng)
    checks.check_variables_fd(layer.trainable_variables, grads[1:],
                              lambda: tf.reduce_sum(tf.sin(layer(x)) * r), rng)


@pytest.mark.parametrize("kwargs,match", [
    ({"gamma": 0.0}, "gamma=0.0"),
    ({"gamma": -1}, "gamma=-1"),
    ({"gamma": "large"}, "gamma='large'"),
    ({"patch_size": 3}, "patch_size=3"),
    ({"activation": "elu"}, "elu"),
    ({"prior": "smooth"}, "prior='smooth'"),
    ({"max_norm": 1.5}, "max_norm=1.5"),
    ({"prior": "box", "box": (1.0, -1.0)}, "box="),
])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match="Received.*" + match.replace("(", r"\(").replace(".", r"\.")):
        GaussianEquilibrium(7, features=8, **kwargs)


def test_a_numpy_box_is_stored_as_python_floats():
    config = GaussianEquilibrium(7, features=8, prior="box", box=(np.float32(-0.5), np.float32(0.5))).get_config()
    json.dumps(config)  # a .keras file holds it
    assert config["box"] == [-0.5, 0.5]


def test_a_weight_that_breaks_the_bound_is_reported_not_clipped():
    layer = GaussianEquilibrium(7, normalization=None, max_norm=0.9, dtype="float64")
    layer.build(X.shape)  # (a call could already fail on the random initial weight)
    layer.cell.V.assign(np.eye(7))
    with pytest.raises(ValueError, match=r"Received: \|\|W\|\|_2=1"):
        layer(X)
    np.testing.assert_array_equal(layer.cell.V.numpy(), np.eye(7))


def test_gamma_auto_on_an_all_zero_batch_is_an_error():
    layer = GaussianEquilibrium(7, dtype="float64")
    with pytest.raises(ValueError, match="gamma='auto'.*Received"):
        layer(np.zeros((2, 5)))
