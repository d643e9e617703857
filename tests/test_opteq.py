"""OptEq: the layer's output is the minimizer of the objective it evaluates."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import keras_implicit as ki
from keras_implicit.layers import OptEqDense
from tests import checks

ACTIVATIONS = ["relu", "leaky_relu", "soft_threshold", "identity", "tanh", "sigmoid"]
PRIORS = [None, "sparse", "nonnegative", "box"]
X = np.random.default_rng(0).standard_normal((4, 5))


def _layer(activation, prior, **kwargs):
    keras.utils.set_random_seed(0)
    kwargs = {"max_norm": 0.9, "tol": 1e-13, "max_iter": 1000, **kwargs}
    layer = OptEqDense(7, activation=activation, prior=prior, prior_weight=0.2, box=(-0.3, 0.4),
                       dtype="float64", **kwargs)
    layer(X)
    rng = np.random.default_rng(1)
    layer.cell.V.assign(rng.standard_normal((7, 7)))  # ||V|| > 1: the normalization acts
    layer.cell.bias.assign(0.5 * rng.standard_normal(7))
    return layer


def _smooth(activation, prior):
    return prior is None and activation in ("leaky_relu", "identity", "tanh", "sigmoid")


def _lbfgs_minimizer(layer, x):
    """Unconstrained L-BFGS on E(x, s(u)), s mapping R onto the activation's open domain."""
    squash = {"tanh": tf.tanh, "sigmoid": tf.sigmoid}.get(layer.cell.activation.name, tf.identity)

    def value_and_grad(u):
        # One problem per row (tfp batches them): per-sample values, their gradients.
        return tfp.math.value_and_gradient(lambda u: layer.objective(x, squash(u)), u)

    start = tf.zeros([x.shape[0], 7], tf.float64)
    # one graph (eagerly, L-BFGS's op-by-op loop took seconds)
    result = tf.function(lambda s: tfp.optimizer.lbfgs_minimize(value_and_grad, s, tolerance=1e-14,
                                                                max_iterations=2000))(start)
    assert np.all(result.converged.numpy())
    return squash(result.position).numpy()


def _proximal_gradient_minimizer(layer, x, step=0.5, iterations=4000):
    """z <- prox_{step (f + g)}(z - step grad h(z)), h = 1/2 z^T (I - W^T W) z - <c, z>;
    step 0.5 (not the layer's iteration, which is step 1)."""
    w = layer.cell.weight()
    c = layer.cell.input_injection(tf.constant(x))

    @tf.function  # one graph (eagerly, 4000 op-by-op steps took seconds)
    def run(z):
        for _ in tf.range(iterations):
            grad = z - tf.matmul(tf.matmul(z, w, transpose_b=True), w) - c
            z = layer.cell.prox(z - step * grad, step)
        return z

    return run(tf.zeros_like(c)).numpy()


@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_equilibrium_minimizes_the_objective(activation, prior):
    layer = _layer(activation, prior, return_info=True)
    z, info = layer(X)
    assert int(info.status) == ki.CONVERGED
    z = z.numpy()
    e = layer.objective(X, z).numpy()
    assert np.all(np.isfinite(e))
    if _smooth(activation, prior):
        np.testing.assert_allclose(z, _lbfgs_minimizer(layer, X), atol=1e-6)
    elif layer.cell.activation.supports(0.5):
        np.testing.assert_allclose(z, _proximal_gradient_minimizer(layer, X), atol=1e-6)
    # E is strongly convex (max_norm 0.9): no nearby point is lower.
    rng = np.random.default_rng(2)
    moved = layer.objective(np.repeat(X, 30, axis=0),  # 30 perturbations of each sample, one batch
                            np.repeat(z, 30, axis=0) + 1e-4 * rng.standard_normal((30 * len(z), z.shape[1])))
    assert np.all(moved.numpy() >= np.repeat(e, 30, axis=0) - 1e-12)


@pytest.mark.parametrize("activation,prior", [("relu", "sparse"), ("tanh", None), ("sigmoid", "box")])
def test_objective_decreases_along_the_forward_iteration(activation, prior):
    layer = _layer(activation, prior)
    x = tf.constant(X)
    z = tf.zeros([4, 7], tf.float64) + (0.5 if activation == "sigmoid" else 0.0)
    values = [layer.objective(x, z).numpy()]
    for _ in range(30):
        z = layer.cell(z, x)
        values.append(layer.objective(x, z).numpy())
    values = np.array(values[1:])  # the start may lie outside the domain (inf)
    assert np.all(np.diff(values, axis=0) <= 1e-12)
    assert np.all(values[-1] < values[0])


def _projection_layer(anchor, **kwargs):
    """Identity activation, W = P an orthogonal projection of rank 3: the equilibria
    z = P z + c form the affine set c + range(P) when P c = 0."""
    layer = OptEqDense(6, activation="identity", max_norm=1.0, anchor=anchor, dtype="float64",
                       return_info=True, on_failure="ignore", **kwargs)
    layer(X)
    q, _ = np.linalg.qr(np.random.default_rng(3).standard_normal((6, 3)))
    p = q @ q.T
    layer.cell.V.assign(p)
    rng = np.random.default_rng(4)
    # Small weights: Halpern's error after k steps is about |(I - P)(a - c)| / k.
    layer.cell.kernel.assign(0.2 * rng.standard_normal((5, 6)) @ (np.eye(6) - p))
    layer.cell.bias.assign(0.2 * rng.standard_normal(6) @ (np.eye(6) - p))
    if anchor == "learned":
        layer.cell.anchor_vector.assign(0.5 * np.random.default_rng(5).standard_normal(6))
    return layer, p


@pytest.mark.parametrize("anchor", ["input", "learned"])
def test_anchor_selects_the_equilibrium_nearest_to_it(anchor):
    layer, p = _projection_layer(anchor, tol=1e-12, max_iter=5000)
    x = tf.constant(X)
    a = layer.cell.anchor(x).numpy()
    c = layer.cell.input_injection(x).numpy()
    nearest = c + (a - c) @ p  # the projection of a onto c + range(P)
    # Halpern's anchor pull decays like 1/k (here the error is 1.705/k): the layer's 5000
    # iterations get within 5e-3 ...
    z, _ = layer(X)
    err_5000 = np.abs(z.numpy() - nearest).max()
    assert err_5000 < 5e-3
    # ... and 200_000 iterations of the same problem (XLA-compiled loop) within 2e-5, with
    # the error shrinking 40-fold, as 1/k does: the iterates converge to `nearest` and to
    # no other point. (2e6 iterations reach 8.5e-7 but take 10 s more of the suite.)
    problem = ki.solvers.Problem.of(layer.cell).bind(x)

    @tf.function(jit_compile=True)
    def run(z0):
        return ki.solvers.solve(problem, z0, ki.solvers.Halpern(anchor="problem"), tol=1e-12, max_iter=200_000)

    z_long, _ = run(tf.constant(a))
    np.testing.assert_allclose(z_long.numpy(), nearest, atol=2e-5)
    if anchor == "learned":  # (from the input anchor, an equilibrium here, both errors are ~0)
        assert 36 < err_5000 / np.abs(z_long.numpy() - nearest).max() < 44
    # Plain iteration from another start lands on another equilibrium.
    start = tf.constant(np.random.default_rng(6).standard_normal((4, 6)))
    plain = ki.fixed_point(lambda z, x: layer.cell(z, x), start, x, solver="fixed_point",
                           tol=1e-12, max_iter=50)[0].numpy()
    np.testing.assert_allclose(plain, c + start.numpy() @ p, atol=1e-9)  # also an equilibrium
    assert np.abs(plain - nearest).max() > 0.1
    if anchor == "learned":
        assert np.abs(nearest - c).max() > 0.1


def test_tanh_and_sigmoid_convex_functions_have_the_activation_as_prox():
    # prox_f(v) minimizes f(z) + (z - v)^2 / 2: compare with a grid search.
    for name, lo, hi in (("tanh", -1.0, 1.0), ("sigmoid", 0.0, 1.0)):
        act = ki.prox.get(name)
        grid = tf.constant(np.linspace(lo, hi, 200001))
        for v in (-2.0, -0.3, 0.0, 0.7, 3.0):
            best = grid[int(tf.argmin(act.value(grid) + 0.5 * (grid - v) ** 2))]
            assert abs(float(best) - float(act(tf.constant(v, tf.float64)))) < 2e-5


def test_gradients_match_finite_differences():
    layer = _layer("tanh", "sparse", tol=1e-12)
    x = tf.constant(X)
    r = tf.constant(np.random.default_rng(7).standard_normal((4, 7)))
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(layer(x) * r)
    gx, *gw = tape.gradient(loss, [x] + layer.trainable_variables)
    rng = np.random.default_rng(8)
    checks.check_input_fd(lambda xx: tf.reduce_sum(layer(xx) * r), x, gx, rng)
    checks.check_variables_fd(layer.trainable_variables, gw, lambda: tf.reduce_sum(layer(x) * r), rng)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="Received: prior='dense'"):
        OptEqDense(4, prior="dense")
    with pytest.raises(ValueError, match="Received: max_norm=1.5"):
        OptEqDense(4, max_norm=1.5)
    with pytest.raises(ValueError, match="Received: box="):
        OptEqDense(4, prior="box", box=(1.0, -1.0))
    with pytest.raises(ValueError, match="Received: box="):
        OptEqDense(4, prior="box", box=(False, True))
    # numpy numbers are numbers: the same layer as with Python floats
    for box in ((np.float32(-0.5), np.float32(0.5)), np.array([-0.5, 0.5]), (np.int64(-1), 1)):
        config = OptEqDense(4, prior="box", box=box, name="a").get_config()
        assert config == OptEqDense(4, prior="box", box=tuple(float(v) for v in box), name="a").get_config()
        json.dumps(config)  # a .keras file holds it
    with pytest.raises(ValueError, match="Received: activation='relu', prior="):
        OptEqDense(4, prior=ki.prox.get("soft_threshold"))
    with pytest.raises(ValueError, match="Received: activation="):
        OptEqDense(4, activation="swish")
    layer = OptEqDense(4, normalization=None, max_norm=0.5, kernel_initializer="zeros")
    layer(np.ones((2, 3), "float32"))
    layer.cell.V.assign(np.eye(4) * 0.9)
    with pytest.raises(ValueError, match=r"Received: \|\|W\|\|_2=0.9"):
        layer(np.ones((2, 3), "float32"))
