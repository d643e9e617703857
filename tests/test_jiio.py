"""JIIO (Gurumurthy et al. 2021): the joint fixed point is a KKT point of
min_x l(x, z) s.t. z = f(z, x); its multiplier is the implicit adjoint; it
agrees with the nested projected-gradient baseline; clear errors."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_implicit import jiio
from keras_implicit.layers import DenseCell, InputOptimization
from tests import checks

N, D, B = 6, 3, 4  # state size, input size, batch


def _linear_problem(seed=0, lam=0.3):
    """f(z, x) = A z + B x + c with ||A||_2 = 0.6; l = 1/2 ||C z - y||^2 + lam/2 ||x||^2."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((N, N))
    a *= 0.6 / np.linalg.norm(a, 2)
    bm, c = rng.standard_normal((D, N)) / np.sqrt(N), rng.standard_normal(N)
    cm = rng.standard_normal((N, 5)) / np.sqrt(N)  # the reduced problem's Hessian has eigenvalues 0.49 ... 6.0
    y = rng.standard_normal((B, 5))
    f = lambda z, x: z @ a.T + x @ bm + c  # noqa: E731  (row vectors: z A^T + x B)
    loss = lambda x, z: 0.5 * tf.reduce_sum((z @ cm - y) ** 2, 1) + 0.5 * lam * tf.reduce_sum(x**2, 1)  # noqa: E731
    # closed form: z(x) = (x B + c) (I - A^T)^{-1}; minimize over x
    inv = np.linalg.inv(np.eye(N) - a.T)
    m, d = bm @ inv @ cm, c @ inv @ cm  # z C = x M + d
    x_star = np.linalg.solve(m @ m.T + lam * np.eye(D), ((y - d) @ m.T).T).T
    z_star = (x_star @ bm + c) @ inv
    mu_star = (z_star @ cm - y) @ cm.T @ np.linalg.inv(np.eye(N) - a)  # mu = dl/dz + A^T mu (row form)
    return f, loss, x_star, z_star, mu_star


def test_linear_quadratic_problem_reaches_the_closed_form_and_its_kkt_point():
    f, loss, x_star, z_star, mu_star = _linear_problem()
    x, z, mu, info = jiio.solve(f, loss, tf.zeros((B, N), tf.float64), tf.zeros((B, D), tf.float64), alpha_x=0.1,
                                tol=1e-12, max_iter=400)
    assert int(info.status) == 0
    assert np.all(info.block_residuals.numpy() < 1e-6), info.block_residuals.numpy()
    np.testing.assert_allclose(x.numpy(), x_star, atol=1e-8)
    np.testing.assert_allclose(z.numpy(), z_star, atol=1e-8)
    np.testing.assert_allclose(mu.numpy(), mu_star, atol=1e-8)
    # the nested baseline reaches the same optimum, at a higher cost in cell evaluations
    xn, zn, stats = jiio.nested_input_optimization(f, loss, tf.zeros((B, N), tf.float64),
                                                   tf.zeros((B, D), tf.float64), alpha_x=0.15, steps=2000,
                                                   x_tol=1e-9, tol=1e-12)
    np.testing.assert_allclose(xn.numpy(), x_star, atol=1e-7)
    assert stats["cell_evaluations"] > int(info.iterations)


def _tanh_problem():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((N, N))
    a *= 0.8 / np.linalg.norm(a, 2)
    bm, target = rng.standard_normal((D, N)), 0.5 * np.tanh(rng.standard_normal((B, N)))
    f = lambda z, x: tf.tanh(z @ a.T + x @ bm)  # noqa: E731
    loss = lambda x, z: tf.reduce_sum((z - target) ** 2, 1) + 0.05 * tf.reduce_sum(x**2, 1)  # noqa: E731
    return f, loss, a


def test_nonlinear_kkt_residuals_vanish_and_mu_is_the_dense_adjoint():
    f, loss, a = _tanh_problem()
    x, z, mu, info = jiio.solve(f, loss, tf.zeros((B, N), tf.float64), tf.zeros((B, D), tf.float64), alpha_x=0.1,
                                tol=1e-12, max_iter=500)
    kkt = info.block_residuals.numpy()
    assert kkt.shape == (B, 3) and np.all(kkt < 1e-6), kkt
    np.testing.assert_allclose(jiio.kkt_residuals(f, loss, z, x, mu).numpy(), kkt, atol=1e-12)
    # mu* = (I - J_z^T)^{-1} dl/dz at z*, from a dense Jacobian per sample
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(z)
        fz = f(z, x)
        value = tf.reduce_sum(loss(x, z))
    jac = tape.batch_jacobian(fz, z).numpy()
    dl = tape.gradient(value, z).numpy()
    for i in range(B):
        np.testing.assert_allclose(mu.numpy()[i], np.linalg.solve(np.eye(N) - jac[i].T, dl[i]), atol=1e-9)
    # x* is stationary for the reduced objective: its gradient through a fresh DEQ solve vanishes
    xn, _, stats = jiio.nested_input_optimization(f, loss, z, x, alpha_x=0.1, steps=5, x_tol=1e-6, tol=1e-12)
    assert stats["steps"] == 0 and float(tf.reduce_max(stats["gradient_mapping"])) < 1e-6


def test_projected_and_normalized_steps_keep_the_norm_bound_and_agree_with_projected_gradient_descent():
    f, loss, x_star, _, _ = _linear_problem()
    ball = jiio.l2_ball(0.3)  # every sample's unconstrained optimum lies outside: the bound is active
    assert np.all(np.linalg.norm(x_star, axis=1) > 1.0)
    z0, x0 = tf.zeros((B, N), tf.float64), tf.zeros((B, D), tf.float64)
    x, z, mu, info = jiio.solve(f, loss, z0, x0, alpha_x=0.1, projection=ball, tol=1e-12, max_iter=600)
    assert np.all(info.block_residuals.numpy() < 1e-6), info.block_residuals.numpy()
    np.testing.assert_allclose(np.linalg.norm(x.numpy(), axis=1), 0.3, rtol=1e-12)
    # the authors' adversarial form: normalized steps, a smaller step after 100 iterations
    xs, _, _, info_s = jiio.solve(f, loss, z0, x0, alpha_x=0.1, projection=ball, normalize_step=True,
                                  switch=(100, 0.02), tol=1e-12, max_iter=600)
    assert info_s.trace.shape == (600,) and np.all(info_s.block_residuals.numpy() < 1e-6)
    np.testing.assert_allclose(xs.numpy(), x.numpy(), atol=1e-9)
    xn, _, _ = jiio.nested_input_optimization(f, loss, z0, x0, alpha_x=0.15, steps=2000, x_tol=1e-9, tol=1e-12,
                                              projection=ball)
    np.testing.assert_allclose(xn.numpy(), x.numpy(), atol=1e-8)


def test_a_stalled_solve_reports_max_iter_and_returns_its_best_iterate():
    f, loss, _ = _tanh_problem()
    with pytest.warns(UserWarning, match="JIIO solve: max_iter reached after 3 iterations"):
        x, z, mu, info = jiio.solve(f, loss, tf.zeros((B, N), tf.float64), tf.zeros((B, D), tf.float64),
                                    solver="fixed_point", tol=1e-12, max_iter=3)
    assert int(info.status) == 1 and int(info.iterations) == 3
    assert np.all(np.isfinite(x.numpy())) and np.all(info.residual.numpy() > 1e-12)


@pytest.mark.parametrize("kwargs, match", [
    ({"alpha_x": -0.1}, "alpha_x=-0.1"),
    ({"alpha_z": 0}, "alpha_z=0"),
    ({"alpha_mu": 1.5}, "alpha_mu=1.5"),
    ({"switch": (0, 0.1)}, r"switch=\(0, 0.1\)"),
    ({"loss": lambda x, z: tf.reduce_sum(z)}, r"shape \[batch\]. Received: a loss of shape \(\)"),
    ({"projection": lambda x: x[:, :1]}, r"`projection` must return x's shape. Received"),
])
def test_bad_arguments_are_named(kwargs, match):
    f, loss, _ = _tanh_problem()
    args = {"loss": loss, **kwargs}
    with pytest.raises(ValueError, match=match):
        jiio.solve(f, args.pop("loss"), tf.zeros((B, N), tf.float64), tf.zeros((B, D), tf.float64), **args)


@pytest.mark.xla
def test_the_joint_solve_compiles_with_xla_in_a_graph_and_matches_eager():
    f, loss, _ = _tanh_problem()
    z0, x0 = tf.zeros((B, N), tf.float64), tf.zeros((B, D), tf.float64)
    eager = jiio.solve(f, loss, z0, x0, tol=1e-12, max_iter=300)
    graph = tf.function(lambda z, x: jiio.solve(f, loss, z, x, tol=1e-12, max_iter=300))
    compiled = graph(z0, x0)
    assert checks.xla_functions(graph.get_concrete_function(z0, x0))  # the loop runs as an XLA function
    for a, b in zip(eager[:3], compiled[:3]):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-9)
    assert int(compiled[3].status) == 0


class LinearCell(keras.layers.Layer):
    """`z A^T + x B + c` with `A, B, c` weights (state size N)."""

    state_size = N

    def build(self, z_shape, x_shape=None):
        rng = np.random.default_rng(0)
        a = rng.standard_normal((N, N))
        self.a = self.add_weight(shape=(N, N), initializer=keras.initializers.Constant(0.6 * a / np.linalg.norm(a, 2)))
        self.b = self.add_weight(shape=(D, N), initializer=keras.initializers.Constant(
            rng.standard_normal((D, N)) / np.sqrt(N)))
        self.c = self.add_weight(shape=(N,), initializer=keras.initializers.Constant(rng.standard_normal(N)))

    def call(self, z, x):
        return tf.matmul(z, self.a, transpose_b=True) + tf.matmul(x, self.b) + self.c


def test_the_layer_returns_the_joint_optimum_and_the_exact_gradient_of_the_optimal_loss():
    """Envelope theorem: d/dtheta min_x l(x, z(x; theta)) is the gradient through z* at a fixed x*."""
    lam, rng = 0.3, np.random.default_rng(3)
    cm, y = rng.standard_normal((N, 5)) / np.sqrt(N), rng.standard_normal((B, 5))

    def loss(x, z, target):
        return 0.5 * tf.reduce_sum((z @ cm - target) ** 2, 1) + 0.5 * lam * tf.reduce_sum(x**2, 1)

    layer = InputOptimization(LinearCell(dtype="float64"), loss, alpha_x=0.1, tol=1e-12, max_iter=400,
                              dtype="float64")
    x0 = tf.zeros((B, D), tf.float64)
    with tf.GradientTape() as tape:
        x, z = layer((x0, y))
        value = tf.reduce_sum(loss(x, z, y))
    grads = tape.gradient(value, layer.trainable_variables)
    cell = layer.cell

    def optimal_value():  # closed form of min_x l(x, z(x)) at the cell's current weights
        a, bm, c = cell.a.numpy(), cell.b.numpy(), cell.c.numpy()
        inv = np.linalg.inv(np.eye(N) - a.T)
        m, d = bm @ inv @ cm, c @ inv @ cm
        xs = np.linalg.solve(m @ m.T + lam * np.eye(D), ((y - d) @ m.T).T).T
        return float(tf.reduce_sum(loss(xs, (xs @ bm + c) @ inv, y))), xs

    best, x_star = optimal_value()
    np.testing.assert_allclose(x.numpy(), x_star, atol=1e-8)
    np.testing.assert_allclose(float(value), best, rtol=1e-12)
    checks.check_variables_fd(layer.trainable_variables, grads, lambda: optimal_value()[0], rng)
    # the solver's cost is logged as for every equilibrium layer
    assert float(layer.fwd_iters_metric.result()) > 1


def test_the_layer_round_trips_its_config_and_reports_a_stalled_solve():
    layer = InputOptimization(DenseCell(4), _sq_loss, projection=None, alpha_x=0.2, switch=(5, 0.05), max_iter=3,
                              solver="fixed_point", tol=1e-12)
    with pytest.warns(UserWarning, match="JIIO solve: max_iter reached after 3 iterations"):
        x, z = layer((np.zeros((2, 3), "float32"), np.ones((2, 4), "float32")))
    clone = InputOptimization.from_config(layer.get_config())
    assert clone.alpha_x == 0.2 and clone.switch == (5, 0.05) and clone.loss is _sq_loss
    with pytest.raises(ValueError, match=r"called on a pair \(x0, target\)"):
        InputOptimization(DenseCell(4), _sq_loss)(np.zeros((2, 3), "float32"))
    with pytest.raises(ValueError, match="Received: loss=3"):
        InputOptimization(DenseCell(4), 3)


@keras.saving.register_keras_serializable(package="test_jiio")
def _sq_loss(x, z, target):
    return tf.reduce_sum((z - target) ** 2, 1)


def test_an_anderson_accelerated_attack_returns_perturbations_inside_the_ball_on_every_batch():
    """Anderson mixes projected points with weights of both signs: without the final
    projection its iterate leaves the ball (by 9e-5 relative in float32, seen when
    adversarial training on digits). Every batch, every sample, inside."""
    rng = np.random.default_rng(3)
    keras.utils.set_random_seed(3)
    cell = DenseCell(32, normalization="weight", max_norm=0.9)
    cell.build((None, 32), (None, 16))
    head = rng.standard_normal((32, 5)).astype("float32")
    eps, worst = 1.0, 0.0
    for batch in range(6):
        x = tf.constant(rng.uniform(size=(64, 16)).astype("float32"))
        y = tf.constant(rng.integers(0, 5, size=64))
        f = lambda z, d, x=x: cell(z, x + d)  # noqa: E731
        loss = lambda d, z, y=y: -keras.losses.sparse_categorical_crossentropy(y, z @ head, from_logits=True)  # noqa: E731
        d, _, _, info = jiio.solve(f, loss, tf.zeros((64, 32)), tf.zeros((64, 16)), alpha_x=eps / 4,
                                   normalize_step=True, projection=jiio.l2_ball(eps), tol=1e-4, max_iter=20,
                                   on_failure="ignore")
        norms = np.linalg.norm(d.numpy().astype("float64"), axis=1)
        worst = max(worst, norms.max())
        assert np.all(norms <= eps * (1 + 1e-6)), (batch, norms.max())
    assert worst > 0.99 * eps  # the bound is active: the check is not vacuous
