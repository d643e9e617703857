"""Gradient checks in float64: implicit vs unrolled autodiff vs finite differences."""

import numpy as np
import pytest
import tensorflow as tf

import keras_implicit as ki
from keras_implicit import backward, solvers
from keras_implicit import layers as L

B, N, D = 4, 6, 3
# W = 0.9 Q (Q orthogonal) and tanh 1-Lipschitz make f a 0.9-contraction: 250 unrolled
# iterations converge z and its derivatives to float64 rounding (the gradients after 100
# iterations differ from those after 250 by 3e-14 relative, after 150 by 0), so unrolled
# autodiff is an exact reference for the implicit gradient.
SCALE = 0.9


def _setup(seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((N, N)))
    w = tf.Variable(SCALE * q, name="w")
    u = tf.Variable(rng.standard_normal((D, N)), name="u")
    c = tf.Variable(0.1 * rng.standard_normal(N), name="c")
    x = tf.constant(rng.standard_normal((B, D)))
    r = tf.constant(rng.standard_normal((B, N)))

    def f(z, x):
        return tf.tanh(tf.matmul(z, w) + tf.matmul(x, u) + c)

    return f, x, r, [w, u, c]


def _loss_and_grads(f, x, r, variables, solver, mode, tol=1e-13, max_iter=400, compile=None):
    def run(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            z, info = ki.fixed_point(
                f, tf.zeros([B, N], tf.float64), x, solver=solver, backward=mode,
                tol=tol, max_iter=max_iter, on_failure="ignore",
            )
            loss = tf.reduce_sum(tf.sin(z) * r)
        return loss, tape.gradient(loss, [x] + variables), info.iterations

    if compile == "graph":
        run = tf.function(run)
    elif compile == "jit":
        run = tf.function(run, jit_compile=True)
    return run(x)


def _rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300)


@pytest.fixture(scope="module")
def reference():
    """Unrolled autodiff through 250 plain iterations (the loop never stops early)."""
    f, x, r, variables = _setup()
    loss, grads, iters = _loss_and_grads(
        f, x, r, variables, solvers.FixedPointIteration(), "unrolled", tol=1e-300, max_iter=250
    )
    assert int(iters) == 250
    return [g.numpy() for g in grads]


@pytest.mark.parametrize("solver", ["fixed_point", "anderson", "broyden"])
@pytest.mark.parametrize("compile", [None, "graph", "jit"])
def test_implicit_matches_unrolled(reference, solver, compile):
    f, x, r, variables = _setup()
    _, grads, _ = _loss_and_grads(f, x, r, variables, solver, "implicit", compile=compile)
    assert len(grads) == 4 and all(g is not None for g in grads)
    for got, want in zip(grads, reference):
        assert _rel(got, want) < 1e-6


@pytest.mark.parametrize("solver", ["fixed_point", "anderson", "broyden"])
@pytest.mark.parametrize("compile", [None, "graph", "jit"])
def test_unrolled_matches_reference(reference, solver, compile):
    f, x, r, variables = _setup()
    _, grads, _ = _loss_and_grads(f, x, r, variables, solver, "unrolled", max_iter=250, compile=compile)
    for got, want in zip(grads, reference):
        assert _rel(got, want) < 1e-6


@pytest.mark.parametrize("solver", ["fixed_point", "anderson", "broyden"])
def test_implicit_matches_finite_differences(solver):
    f, x, r, variables = _setup()
    _, grads, _ = _loss_and_grads(f, x, r, variables, solver, "implicit")
    rng = np.random.default_rng(3)
    h = 1e-5

    @tf.function  # the differences need many tight solves: one graph (op by op, each iteration costs ms)
    def loss_graph(xv):
        z, _ = ki.fixed_point(f, tf.zeros([B, N], tf.float64), xv, solver=solver, tol=1e-14, max_iter=500)
        return tf.reduce_sum(tf.sin(z) * r)

    def loss_at(xv):
        return float(loss_graph(xv))

    v = rng.standard_normal(x.shape)
    fd = (loss_at(x + h * v) - loss_at(x - h * v)) / (2 * h)
    assert abs(fd - np.sum(grads[0].numpy() * v)) / abs(fd) < 1e-6
    for var, g in zip(variables, grads[1:]):
        v = rng.standard_normal(var.shape)
        base = var.numpy()
        var.assign(base + h * v)
        plus = loss_at(x)
        var.assign(base - h * v)
        minus = loss_at(x)
        var.assign(base)
        fd = (plus - minus) / (2 * h)
        assert abs(fd - np.sum(g.numpy() * v)) / abs(fd) < 1e-6, var.name


def test_gradients_do_not_depend_on_solver_path_or_start():
    f, x, r, variables = _setup()
    grads = []
    for z0 in (tf.zeros([B, N], tf.float64), tf.ones([B, N], tf.float64) * 0.5):
        with tf.GradientTape() as tape:
            z, _ = ki.fixed_point(f, z0, x, tol=1e-13, max_iter=400)
            loss = tf.reduce_sum(tf.sin(z) * r)
        grads.append(tape.gradient(loss, variables))
    for a, b in zip(*grads):
        assert _rel(a, b) < 1e-8


def _linear_problem():
    rng = np.random.default_rng(5)
    q, _ = np.linalg.qr(rng.standard_normal((N, N)))
    a = tf.Variable(0.7 * q)
    bm = tf.constant(rng.standard_normal((D, N)))
    x = tf.constant(rng.standard_normal((B, D)))
    g = tf.constant(rng.standard_normal((B, N)))
    return (lambda z, x: tf.matmul(z, a) + tf.matmul(x, bm)), a, bm, x, g


@pytest.mark.parametrize("steps,damping", [(1, 1.0), (3, 0.5), (5, 0.8)])
def test_phantom_is_the_k_step_formula(steps, damping):
    f, a, bm, x, g = _linear_problem()
    with tf.GradientTape() as tape:
        tape.watch(x)
        z, _ = ki.fixed_point(f, tf.zeros([B, N], tf.float64), x, backward=backward.Phantom(steps, damping), tol=1e-13, max_iter=300)
        loss = tf.reduce_sum(z * g)
    gx = tape.gradient(loss, x).numpy()
    # z_{j+1} = z_j M + damping x B, M = (1 - damping) I + damping A, from z* held constant.
    m = (1 - damping) * np.eye(N) + damping * a.numpy()
    s = sum(np.linalg.matrix_power(m, i) for i in range(steps))
    np.testing.assert_allclose(gx, g.numpy() @ (damping * bm.numpy() @ s).T, rtol=1e-10, atol=1e-12)
    # The output is the result of the k steps from z* (equal to z* itself here).
    z_star = x.numpy() @ bm.numpy() @ np.linalg.inv(np.eye(N) - a.numpy())
    np.testing.assert_allclose(z.numpy(), z_star, atol=1e-10)


def test_jacobian_free_is_order_zero_neumann():
    f, a, bm, x, g = _linear_problem()
    with tf.GradientTape() as tape:
        tape.watch(x)
        z, _ = ki.fixed_point(f, tf.zeros([B, N], tf.float64), x, backward="jacobian_free", tol=1e-13, max_iter=300)
        loss = tf.reduce_sum(z * g)
    gx, ga = tape.gradient(loss, [x, a])
    np.testing.assert_allclose(gx.numpy(), g.numpy() @ bm.numpy().T, rtol=1e-10)
    np.testing.assert_allclose(ga.numpy(), z.numpy().T @ g.numpy(), rtol=1e-8)
    # and it differs from the exact gradient, which JFB only approximates
    exact = g.numpy() @ (bm.numpy() @ np.linalg.inv(np.eye(N) - a.numpy())).T
    assert _rel(gx.numpy(), exact) > 0.1


@pytest.mark.parametrize("compile", [None, "graph"])
def test_second_order_matches_finite_differences(compile):
    """A gradient-penalty term and a Hessian-vector product through the solve."""
    f, x, r, variables = _setup()
    w = variables[0]
    v = tf.constant(np.random.default_rng(7).standard_normal(x.shape))

    def grad_x(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            z, _ = ki.fixed_point(f, tf.zeros([B, N], tf.float64), x, tol=1e-14, max_iter=500)
            loss = tf.reduce_sum(tf.sin(z) * r)
        return tape.gradient(loss, x)

    def second(x):
        with tf.GradientTape(persistent=True) as outer:
            outer.watch(x)
            gx = grad_x(x)
            penalty = tf.reduce_sum(gx**2)
            gv = tf.reduce_sum(gx * v)
        return outer.gradient(penalty, w), outer.gradient(gv, x)

    run = tf.function(second) if compile else second
    dpen_dw, hvp = run(x)
    grad_x = tf.function(grad_x)  # the finite differences below: one graph
    h = 1e-5
    fd_hvp = (grad_x(x + h * v) - grad_x(x - h * v)) / (2 * h)
    assert _rel(hvp.numpy(), fd_hvp.numpy()) < 1e-6
    dw = np.random.default_rng(8).standard_normal(w.shape)
    base = w.numpy()
    w.assign(base + h * dw)
    plus = float(tf.reduce_sum(grad_x(x) ** 2))
    w.assign(base - h * dw)
    minus = float(tf.reduce_sum(grad_x(x) ** 2))
    w.assign(base)
    fd = (plus - minus) / (2 * h)
    assert abs(fd - np.sum(dpen_dw.numpy() * dw)) / abs(fd) < 1e-6


def test_closure_capture_warns():
    t = tf.constant(np.random.randn(3, 3) * 0.1)
    with pytest.warns(UserWarning, match="captures 1 float tensor"):
        ki.fixed_point(lambda z, x: tf.tanh(z @ t + x), tf.zeros([2, 3], tf.float64), tf.ones([2, 3], tf.float64))


def test_no_capture_warning_for_variables_and_args():
    import warnings

    f, x, _, _ = _setup()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ki.fixed_point(f, tf.zeros([B, N], tf.float64), x, tol=1e-8)


def test_a_dropped_layer_is_freed_with_its_traced_gradient():
    # TensorFlow registers a graph's custom gradients in a global registry that it
    # never prunes: the entries must not keep the layer (and its graphs) alive
    import gc
    import weakref

    from tensorflow.python.framework.ops import _gradient_registry

    before = set(_gradient_registry._registry)
    layer = L.MonotoneDense(4)

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.reduce_sum(layer(x) ** 2)
        return tape.gradient(y, [x] + layer.trainable_variables)

    assert all(g is not None for g in step(tf.ones([2, 3])))
    added = set(_gradient_registry._registry) - before
    assert added  # the trace registered its gradients
    ref = weakref.ref(layer)
    del layer, step
    gc.collect()
    assert ref() is None
    assert not added & set(_gradient_registry._registry)


def test_without_gradient_solves_the_same_and_gives_no_gradient_and_is_not_cached():
    # (what the exported `<layer>_forward` signatures use)
    from keras_implicit.fixed_point import without_gradient

    layer = L.ForwardFPI(L.DenseCell(4), tol=1e-8)
    x = tf.constant(np.random.default_rng(0).standard_normal((3, 5)), tf.float32)
    reference = layer(x)
    with without_gradient():
        with tf.GradientTape() as tape:
            tape.watch(x)
            z = layer(x)  # eagerly: the layer's cached solve keeps the two apart
        assert tape.gradient(z, x) is None
    np.testing.assert_allclose(z.numpy(), reference.numpy(), atol=1e-6)
    with tf.GradientTape() as tape:
        tape.watch(x)
        z = layer(x)
    g = tape.gradient(z, x)
    assert g is not None and np.isfinite(g.numpy()).all()
