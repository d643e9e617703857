"""Linear and single-index DEQs (Dandapanthula & Ramdas 2025): exact solves and
gradients against closed forms, the conservation law under gradient flow, its O(eta^2)
drift under gradient descent, the backward approximations' factors and the
counterexample on which the 2-term Neumann rule stalls, and clear errors for
ill-posed parameters (float64)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_implicit as ki
from keras_implicit import backward, dynamics
from keras_implicit.layers import LinearDEQ, SingleIndexDEQ

MSE = keras.losses.mean_squared_error


def _scalar_model(w, b, **kwargs):
    model = keras.Sequential([keras.Input((1,), dtype="float64"),
                              LinearDEQ(1, use_bias=False, dtype="float64", **kwargs)])
    model.layers[0].cell.kernel.assign([[w]])
    model.layers[0].cell.recurrent_kernel.assign([[b]])
    return model


def _quantity(variables):
    return {"Q": dynamics.conserved_quantity(variables[1], variables[0])[0, 0]}


def _data(n=200, seed=0):
    x = np.random.default_rng(seed).uniform(0, 1, (n, 1))
    return x, 2 * x


def test_linear_deq_exact_and_iterative_solves_and_gradients_match_the_closed_form():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 3))
    a = 0.4 * rng.standard_normal((4, 4))
    u, c, v = rng.standard_normal((3, 4)), rng.standard_normal(4), rng.standard_normal((4, 2))
    inv = np.linalg.inv(np.eye(4) - a)
    expected = (x @ u + c) @ inv @ v
    # d/dA of sum((x U + c)(I - A)^{-1} V) = (I - A)^{-T} (x U + c)^T 1 V^T (I - A)^{-T}
    grad_a = inv.T @ (x @ u + c).T @ np.ones((5, 2)) @ v.T @ inv.T
    for kwargs in ({}, {"solver": "anderson", "tol": 1e-13, "max_iter": 100}):
        layer = LinearDEQ(4, output_units=2, dtype="float64", **kwargs)
        layer(x)
        for var, value in zip((layer.cell.kernel, layer.cell.recurrent_kernel, layer.cell.bias, layer.readout_kernel),
                              (u, a, c, v)):
            var.assign(value)
        with tf.GradientTape() as tape:
            y = layer(x)
            total = tf.reduce_sum(y)
        np.testing.assert_allclose(y.numpy(), expected, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(tape.gradient(total, layer.cell.recurrent_kernel).numpy(), grad_a, rtol=1e-8)
    assert layer.cell.well_posedness()["spectral_radius"] == pytest.approx(np.max(np.abs(np.linalg.eigvals(a))))


def test_single_index_root_and_implicit_gradient_equal_the_closed_form():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((7, 4))
    w, b = rng.standard_normal((4, 1)), -0.7
    results = []
    for kwargs in ({}, {"solver": "anderson", "tol": 1e-13, "max_iter": 200}):
        layer = SingleIndexDEQ("tanh", dtype="float64", **kwargs)
        layer(x)
        layer.cell.kernel.assign(w)
        layer.cell.recurrent_kernel.assign(b)
        xt = tf.constant(x)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(xt)
            y = layer(xt)
            total = tf.reduce_sum(y)
        y = y.numpy()
        np.testing.assert_allclose(y, np.tanh(x @ w + b * y), atol=1e-12)  # the fixed point
        slope = 1 - np.tanh(x @ w + b * y) ** 2
        factor = slope / (1 - b * slope)  # dy/ds
        np.testing.assert_allclose(tape.gradient(total, layer.cell.kernel).numpy(), x.T @ factor, rtol=1e-9)
        np.testing.assert_allclose(tape.gradient(total, layer.cell.recurrent_kernel).numpy(),
                                   np.sum(factor * y), rtol=1e-9)
        np.testing.assert_allclose(tape.gradient(total, xt).numpy(), factor * w.T, rtol=1e-9)
        results.append(y)
    np.testing.assert_allclose(results[0], results[1], atol=1e-12)


def test_gradient_flow_conserves_the_quantity_to_the_ode_tolerance_and_gradient_descent_does_not():
    x, y = _data()
    times = np.linspace(0, 2.0, 21)
    flow = dynamics.gradient_flow(*dynamics.model_loss(_scalar_model(0.024, 0.068), MSE, x, y), times,
                                  rtol=1e-10, atol=1e-12, record=_quantity)
    assert flow["loss"][-1] < 1e-3 * flow["loss"][0]  # it moved a long way
    assert np.max(np.abs(flow["Q"] - flow["Q"][0])) < 1e-8
    gd = dynamics.gradient_descent(*dynamics.model_loss(_scalar_model(0.024, 0.068), MSE, x, y), 0.01, 200,
                                   record=_quantity)
    assert gd["Q"][-1] - gd["Q"][0] > 1e-3


def test_the_matrix_quantity_is_conserved_for_a_linear_deq_with_bias_and_readout():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((50, 3))
    y = x @ rng.standard_normal((3, 2))
    model = keras.Sequential([keras.Input((3,), dtype="float64"),
                              LinearDEQ(4, output_units=2, dtype="float64",
                                        recurrent_initializer=keras.initializers.RandomNormal(0, 0.2, seed=1))])
    layer = model.layers[0]
    record = lambda v: {"Q": dynamics.layer_quantity(layer)}  # noqa: E731
    flow = dynamics.gradient_flow(*dynamics.model_loss(model, MSE, x, y), np.linspace(0, 1.0, 6), record=record)
    assert flow["loss"][-1] < 0.5 * flow["loss"][0]
    np.testing.assert_allclose(flow["Q"], np.broadcast_to(flow["Q"][0], flow["Q"].shape), atol=1e-8)


def test_gradient_descent_drift_is_eta_squared_gradient_squared_and_the_distance_never_decreases():
    x, y = _data()
    drifts = []
    for eta in (1e-1, 1e-2, 1e-3):
        gd = dynamics.gradient_descent(*dynamics.model_loss(_scalar_model(0.024, 0.068), MSE, x, y), eta, 20,
                                       record=_quantity)
        step = np.diff(gd["Q"])
        np.testing.assert_allclose(step, eta**2 * gd["gradient_norm"][:-1] ** 2, rtol=1e-9, atol=1e-15)
        assert np.all(step >= 0)  # the distance to the singular point (0, 1) never decreases
        drifts.append(step[0])  # one step from the same point
    slope = np.polyfit(np.log([1e-1, 1e-2, 1e-3]), np.log(drifts), 1)[0]
    assert 1.9 < slope < 2.1, slope


def test_authors_scalar_run_reaches_their_end_point():
    x = np.random.default_rng(0).uniform(0, 1, (1000, 1))
    gd = dynamics.gradient_descent(*dynamics.model_loss(_scalar_model(0.024, 0.068), MSE, x, 2 * x), 0.01, 200)
    w, b = gd["params"][0][-1][0, 0], gd["params"][1][-1][0, 0]
    assert abs(w - 0.840) < 2e-3 and abs(b - 0.580) < 2e-3
    assert gd["loss"][-1] < 1e-20
    assert dynamics.linear_rate(gd["loss"][:150]) < 0.8  # linear convergence


@pytest.mark.parametrize("mode, factor", [
    ("implicit", lambda a: 1 / (1 - a)),
    ("jacobian_free", lambda a: 1.0),
    (backward.Neumann(2), lambda a: 1 + a),
    (backward.Neumann(3), lambda a: 1 + a + a * a),
    (backward.Neumann(2, damping=0.5), lambda a: 0.5 * (1 + (1 - 0.5 * (1 - a)))),
])
def test_backward_modes_scale_the_gradient_by_their_scalar_factor(mode, factor):
    for a in (0.5, -0.8):
        x = tf.constant([[1.5]], tf.float64)
        with tf.GradientTape() as tape:
            tape.watch(x)
            z, _ = ki.fixed_point(lambda z, x: a * z + x, tf.zeros_like(x), x, backward=mode, tol=1e-13,
                                  max_iter=300)
        np.testing.assert_allclose(z.numpy(), 1.5 / (1 - a), rtol=1e-10)  # the value is z* itself
        np.testing.assert_allclose(tape.gradient(z, x).numpy(), [[factor(a)]], rtol=1e-9)


def test_the_two_term_neumann_rule_stalls_at_b_minus_one_where_the_others_converge():
    x = np.random.default_rng(0).uniform(0, 1, (200, 1))
    final = {}
    for name, kwargs in {"exact": {}, "jfb": {"backward": "jacobian_free"}, "neumann2": {"backward": backward.Neumann(2)},
                         "neumann3": {"backward": backward.Neumann(3)}}.items():
        extra = {} if not kwargs else {"solver": "anderson", "tol": 1e-12, "max_iter": 50}
        gd = dynamics.gradient_descent(*dynamics.model_loss(_scalar_model(2.0, -0.5, **kwargs, **extra), MSE, x,
                                                            0.2 * x), 0.2, 300)
        final[name] = (gd["loss"][-1], gd["params"][1][-1][0, 0])
    assert final["exact"][0] < 1e-6 and final["jfb"][0] < 1e-10 and final["neumann3"][0] < 1e-10
    assert final["neumann2"][0] > 0.05 and abs(final["neumann2"][1] + 1) < 1e-3, final["neumann2"]


def test_a_nonlinear_single_index_deq_does_not_conserve_the_quantity():
    """The law needs the output to depend on (w, b) through w / (1 - b) only:
    y = tanh(w x + b y) breaks it even under gradient flow (documented)."""
    x = np.random.default_rng(0).uniform(0, 1, (200, 1))
    model = keras.Sequential([keras.Input((1,), dtype="float64"), SingleIndexDEQ("tanh", dtype="float64")])
    model.layers[0].cell.kernel.assign([[0.3]])
    model.layers[0].cell.recurrent_kernel.assign(0.2)
    flow = dynamics.gradient_flow(*dynamics.model_loss(model, MSE, x, np.tanh(1.5 * x)), np.linspace(0, 2.0, 5),
                                  record=lambda v: {"Q": dynamics.conserved_quantity(v[1], v[0])[0, 0]})
    assert np.max(np.abs(flow["Q"] - flow["Q"][0])) > 1e-3


def test_ill_posed_parameters_raise_clear_errors_never_nan():
    layer = SingleIndexDEQ("tanh", dtype="float64")
    x = np.ones((2, 3))
    layer(x)
    layer.cell.recurrent_kernel.assign(1.2)
    with pytest.raises(ValueError, match=r"not well-posed.*Received: b=1.2"):
        layer(x)
    with pytest.raises(tf.errors.InvalidArgumentError, match="not well-posed"):
        tf.function(layer)(x)
    sig = SingleIndexDEQ("sigmoid", dtype="float64")  # sup sigma' = 1/4: b = 3 is fine
    sig(x)
    sig.cell.recurrent_kernel.assign(3.0)
    assert np.all(np.isfinite(sig(x).numpy()))
    with pytest.raises(ValueError, match="`lipschitz`.*Received: activation="):
        SingleIndexDEQ(lambda t: t**3)
    lin = LinearDEQ(2, dtype="float64")
    lin(x)
    lin.cell.recurrent_kernel.assign(np.eye(2))
    with pytest.raises(ValueError, match="I - A is singular"):
        lin(x)
    it = LinearDEQ(2, solver="fixed_point", dtype="float64")
    it(x)
    it.cell.recurrent_kernel.assign(1.5 * np.eye(2))
    with pytest.raises(ValueError, match="spectral radius of A is 1.5"):
        it(x)
    with pytest.raises(ValueError, match="return_info needs an iterative solver"):
        LinearDEQ(2, return_info=True)


def test_config_round_trips_keep_the_exact_solver():
    for layer in (LinearDEQ(3, output_units=2), SingleIndexDEQ("sigmoid"), LinearDEQ(3, solver="anderson")):
        clone = type(layer).from_config(layer.get_config())
        assert clone.exact == layer.exact and clone.get_config() == layer.get_config()
