"""What an adversarial user tried (issue "Never silent, never wrong"): each case
failed on an earlier main and must keep passing."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_implicit as ki
from tests import checks

SOLVERS = ["fixed_point", "anderson", "broyden", "halpern"]


@pytest.mark.parametrize("solver", SOLVERS)
def test_a_map_that_returns_a_broadcastable_shape_is_refused_by_every_solver(solver):
    # Anderson and Broyden used to broadcast [4, 1] against the [4, 8] state and report CONVERGED
    def f(z, x):
        return 0.5 * tf.reduce_mean(z, 1, keepdims=True) + x[:, :1]

    with pytest.raises(ValueError, match=r"must return the state's shape \[batch, 8\]. Received: a tensor "
                                         r"of shape \(4, 1\)"):
        ki.fixed_point(f, tf.zeros([4, 8]), tf.ones([4, 8]), solver=solver)


@pytest.mark.parametrize("jit", [pytest.param(True, marks=pytest.mark.xla), False])
@pytest.mark.parametrize("solver", SOLVERS)
def test_one_scalar_per_sample_is_a_valid_state_in_graph_mode(solver, jit):
    # a [batch] state (the single-index DEQ's) used to fail inside tf.function (ConcatV2 int32/float32)
    tol = 1e-2 if solver == "halpern" else 1e-10  # Halpern converges at O(1/k)
    fn = tf.function(lambda: ki.fixed_point(lambda z: 0.5 * z + 0.5, tf.zeros([3], tf.float64), solver=solver,
                                            tol=tol, max_iter=200, jit_loop=jit))
    z, info = fn()
    assert z.shape == (3,) and int(info.status) == 0
    np.testing.assert_allclose(z.numpy(), 1.0, atol=2 * tol)
    nested = tf.function(lambda: ki.fixed_point(lambda s: (0.5 * s[0] + 0.5, 0.25 * s[1]),
                                                (tf.zeros([3], tf.float64), tf.ones([3, 2], tf.float64)),
                                                solver=solver, tol=tol, max_iter=200, jit_loop=jit))
    (a, b), info = nested()
    assert int(info.status) == 0
    np.testing.assert_allclose(a.numpy(), 1.0, atol=2 * tol)
    np.testing.assert_allclose(b.numpy(), 0.0, atol=2 * tol)


def test_a_cell_follows_the_dtype_of_its_layer():
    layer = ki.layers.ForwardFPI(ki.layers.DenseCell(5), dtype="float64")
    out = layer(np.ones((2, 3)))
    assert out.dtype == tf.float64 and all(v.dtype == "float64" for v in layer.cell.weights)
    given = ki.layers.ForwardFPI(ki.layers.DenseCell(5, dtype="float64"))  # a cell's own policy stays
    assert given.cell.dtype_policy.name == "float64"


def test_numpy_scalars_are_accepted_as_tol_and_max_iter():
    z, info = ki.fixed_point(lambda z: 0.5 * z + 1.0, tf.zeros([2, 1]), tol=np.float32(1e-3), max_iter=np.int64(50))
    assert int(info.status) == 0
    layer = ki.layers.ForwardFPI(ki.layers.DenseCell(3), tol=np.float64(1e-4), max_iter=np.int32(40))
    assert layer.max_iter == 40 and isinstance(layer.max_iter, int)
    with pytest.raises(ValueError, match=r"Received: max_iter=np.True_|Received: max_iter=True"):
        ki.fixed_point(lambda z: z, tf.zeros([2, 1]), max_iter=np.bool_(True))


def test_a_tolerance_whose_square_overflows_never_accepts_an_infinite_residual():
    # float32: tol**2 = 1e60 was inf, and an infinite residual compared <= inf
    z, info = ki.fixed_point(lambda z: 1e20 * (z + 1.0), tf.zeros([2, 1]), tol=1e30, max_iter=5,
                             on_failure="ignore")
    residual = info.residual.numpy()
    assert not np.any(info.converged.numpy() & ~np.isfinite(residual)), residual
    assert np.all(residual[info.converged.numpy()] <= 1e30)
    z, info = ki.fixed_point(lambda z: 0.5 * z + 1.0, tf.zeros([2, 1]), tol=1e30)
    assert int(info.status) == 0 and np.all(np.isfinite(info.residual.numpy()))


def test_certified_accuracy_refuses_a_nan_radius_and_an_empty_set():
    import keras

    from keras_implicit.robustness import certified_accuracy

    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    x, y = np.ones((4, 3), "float32"), np.zeros(4, int)
    with pytest.raises(ValueError, match=r"`eps` must be >= 0. Received: eps=\[nan\]"):
        certified_accuracy(model, x, y, [float("nan")], 1.0)  # returned 0.0
    with pytest.raises(ValueError, match=r"at least one sample. Received: x.shape=\(0, 3\)"):
        certified_accuracy(model, x[:0], y[:0], [0.1], 1.0)  # failed inside numpy
    assert 0.0 <= certified_accuracy(model, x, y, 0.1, 1.0) <= 1.0


@pytest.mark.parametrize("mode", ["eager", "graph", pytest.param("xla", marks=pytest.mark.xla)])
def test_the_trace_is_bounded_whatever_max_iter(mode, monkeypatch):
    # the trace was sized by max_iter: 1.77 GB for a 5-iteration graph solve at max_iter 1e8,
    # and an eager solve's time grew with max_iter
    from keras_implicit.solvers import base

    def solve(max_iter, rate):
        return ki.fixed_point(lambda z, x: rate * z + x, tf.zeros([2, 3], tf.float64), tf.ones([2, 3], tf.float64),
                              max_iter=max_iter, tol=1e-10, solver="fixed_point", on_failure="ignore",
                              jit_loop=mode == "xla")

    run = solve if mode == "eager" else tf.function(solve, reduce_retracing=False)
    _, info = run(10**8, 0.5)
    assert info.trace.shape == (base.TRACE_LENGTH,) and int(info.status) == 0
    monkeypatch.setattr(base, "TRACE_LENGTH", 50)
    _, info = run(200, 0.9)  # about 230 iterations to 1e-10: longer than the trace
    trace = info.trace.numpy()
    assert trace.shape == (50,) and int(info.iterations) == 200
    np.testing.assert_allclose(trace[:3], np.sqrt(3) * np.array([1.0, 0.9, 0.81]), rtol=1e-12)  # the first ones
    assert np.all(np.diff(trace) < 0)


@pytest.mark.xla
def test_a_loop_that_xla_would_change_runs_uncompiled_and_as_written(capfd):
    # tf.print and tf.numpy_function failed with an XLA error that never named jit_loop;
    # a failing tf.debugging assertion was compiled away in silence
    def printing(z):
        tf.print("iterating")
        return 0.5 * z + 1.0

    def python(z):
        return tf.ensure_shape(tf.numpy_function(lambda a: 0.5 * a + np.float32(1), [z], tf.float32), z.shape)

    def asserting(z):
        tf.debugging.assert_less(z, 1.5, message="z out of range")
        return 0.5 * z + 1.0

    for f in (printing, python):
        z, info = tf.function(lambda: ki.fixed_point(f, tf.zeros([2, 3]), tol=1e-6))()
        assert int(info.status) == 0 and np.allclose(z.numpy(), 2.0, atol=1e-5)
    assert "iterating" in capfd.readouterr().err
    with pytest.raises(tf.errors.InvalidArgumentError, match="z out of range"):
        tf.function(lambda: ki.fixed_point(asserting, tf.zeros([2, 3]))[0])()
    plain = tf.function(lambda: ki.fixed_point(lambda z: 0.5 * z + 1.0, tf.zeros([2, 3]))[0])  # still compiles
    assert checks.xla_functions(plain.get_concrete_function())


@pytest.mark.parametrize("family", ["ForwardFPI", "MonotoneDense"])
def test_one_nan_in_the_training_data_shows_in_the_loss_instead_of_poisoning_the_weights(family):
    # The NaN sample used to return its last finite iterate: the loss stayed finite
    # (about log 10) while its NaN gradient turned every equilibrium weight into NaN.
    import keras

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((128, 8)).astype("float32"), rng.integers(0, 10, 128)
    x[5, 3] = np.nan
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,))
    layer = (ki.layers.ForwardFPI(ki.layers.DenseCell(16), name="deq") if family == "ForwardFPI"
             else ki.layers.MonotoneDense(16, name="deq"))
    model = keras.Model(inputs, keras.layers.Dense(10)(layer(inputs)))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    clean = model.predict(np.nan_to_num(x), verbose=0)
    served = model.predict(x, verbose=0)  # the NaN row is NaN, the others as in a clean batch
    assert np.isnan(served[5]).all()
    np.testing.assert_allclose(np.delete(served, 5, 0), np.delete(clean, 5, 0), atol=1e-5)
    history = model.fit(x, y, epochs=3, batch_size=32, verbose=0, callbacks=[keras.callbacks.TerminateOnNaN()])
    assert len(history.history["loss"]) == 1 and np.isnan(history.history["loss"][0])


def _non_contractive(seed=0, n=5):
    """f(z, x) = A z + x with spectral radius 1.5 (I - A invertible): Broyden solves
    the forward; plain iteration of the adjoint diverges."""
    rng = np.random.default_rng(seed)
    q = np.linalg.qr(rng.standard_normal((n, n)))[0]
    a = q @ np.diag(np.linspace(-1.5, 0.5, n)) @ q.T
    return tf.constant(a), lambda z, x, a=tf.constant(a): z @ a + x


@pytest.mark.parametrize("adjoint", [{"solver": "fixed_point"}, {"solver": "fixed_point", "max_iter": 1},
                                     {"max_iter": 1}])
def test_a_failed_adjoint_solve_is_mended_by_the_fallback_and_reported(adjoint):
    # The adjoint used to return a gradient wrong by 46 % or more, with no report.
    a, f = _non_contractive()
    x = tf.constant(np.random.default_rng(1).standard_normal((3, 5)))
    infos = []
    with tf.GradientTape() as tape:
        tape.watch(x)
        z, info = ki.fixed_point(f, tf.zeros_like(x), x, solver="broyden", tol=1e-12, max_iter=100,
                                 backward=ki.backward.Implicit(tol=1e-12, **adjoint), backward_callback=infos.append,
                                 check_captures=False)
        loss = tf.reduce_sum(tf.sin(z))
    assert bool(info.converged.numpy().all())
    g = tape.gradient(loss, x).numpy()
    # dL/dx = (I - A)^{-T} applied to cos(z*) (row form: z = z A + x)
    expected = np.cos(z.numpy()) @ np.linalg.inv(np.eye(5) - a.numpy()).T
    np.testing.assert_allclose(g, expected, rtol=1e-8)
    assert int(infos[0].status) == ki.CONVERGED and bool(infos[0].converged.numpy().all())


def test_an_adjoint_that_cannot_converge_is_reported_eagerly_and_in_the_layer_metric():
    a, f = _non_contractive()
    x = tf.constant(np.random.default_rng(1).standard_normal((3, 5)))
    with tf.GradientTape() as tape:
        tape.watch(x)
        z, _ = ki.fixed_point(f, tf.zeros_like(x), x, solver="broyden", tol=1e-12, max_iter=100,
                              backward=ki.backward.Implicit(tol=1e-300, max_iter=2), on_failure="raise",
                              check_captures=False)
        loss = tf.reduce_sum(z)
    with pytest.raises(ki.ConvergenceError, match=r"adjoint \(backward\) solve: max_iter reached"):
        tape.gradient(loss, x)
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    layer = ki.layers.ForwardFPI(ki.layers.DenseCell(8), backward=ki.backward.Implicit(tol=1e-30, max_iter=2),
                                 name="deq")
    model = keras.Model(inputs, layer(inputs))
    model.compile("sgd", "mse")
    rng = np.random.default_rng(0)
    logs = model.fit(rng.standard_normal((32, 4)), rng.standard_normal((32, 8)), epochs=1, verbose=0).history
    assert logs["deq_bwd_res"][0] > 0 and np.isfinite(logs["deq_bwd_res"][0])
    assert logs["deq_bwd_iters"][0] > 2  # the fallback ran


def test_anderson_with_a_long_memory_isolates_a_nan_sample():
    # memory > 8 solves its small systems with tf.linalg.solve, which failed for the
    # whole batch ("Input matrix is not invertible") when one sample held NaN
    x = np.ones((3, 4))
    x[1, 2] = np.nan
    z, info = ki.fixed_point(lambda z, x: 0.5 * tf.tanh(z) + x, tf.zeros([3, 4], tf.float64), tf.constant(x),
                             solver=ki.solvers.Anderson(memory=10), tol=1e-10, max_iter=100, on_failure="ignore")
    assert info.converged.numpy().tolist() == [True, False, True]
    assert np.isnan(z.numpy()[1]).all() and np.isfinite(z.numpy()[[0, 2]]).all()


def test_certified_accuracy_does_not_certify_samples_whose_solve_did_not_converge():
    # used to certify from the logits of an unconverged solve, whose slope is not bounded by gamma
    import keras

    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).standard_normal((40, 6)).astype("float32")
    model = keras.Sequential([keras.Input((6,)), ki.layers.LipschitzDense(16, 3, lipschitz=1.0, max_iter=2,
                                                                          tol=1e-12, on_failure="ignore")])
    y = np.argmax(model.predict(x, verbose=0), 1)  # every prediction "correct"
    assert ki.robustness.certified_accuracy(model, x, y, 0.0, 1.0, require_converged=False) > 0.9
    assert ki.robustness.certified_accuracy(model, x, y, 0.0, 1.0) == 0.0
    converged = keras.Sequential([keras.Input((6,)), ki.layers.LipschitzDense(16, 3, lipschitz=1.0, tol=1e-6,
                                                                              max_iter=300)])
    y = np.argmax(converged.predict(x, verbose=0), 1)
    assert ki.robustness.certified_accuracy(converged, x, y, 0.0, 1.0) > 0.9
    assert ki.robustness.converged_samples(converged.layers[0], x).all()


def test_forward_backward_above_its_bound_warns_when_the_model_is_built_not_only_eagerly():
    # fit runs compiled: the eager check never ran and training diverged without a word
    import keras

    with pytest.warns(UserWarning, match=r"alpha=50.0 exceeds its convergence bound .* \(at build\)"):
        inputs = keras.Input((4,))
        keras.Model(inputs, ki.layers.MonotoneDense(8, solver="forward_backward", alpha=50.0)(inputs))


def test_forward_mode_through_the_implicit_backward_raises_instead_of_returning_zeros():
    # the JVP used to be None eagerly and zeros inside tf.function
    x = tf.constant([[0.3, -0.2]], tf.float64)
    w = tf.Variable([[0.5, 0.1], [-0.2, 0.4]], dtype=tf.float64)
    v = tf.constant([[1.0, 0.0]], tf.float64)

    def f(z, x):
        return tf.tanh(z @ w + x)

    def jvp(x, backward):
        with tf.autodiff.ForwardAccumulator(x, v) as acc:
            z, _ = ki.fixed_point(f, tf.zeros_like(x), x, backward=backward, tol=1e-13, max_iter=300)
        return acc.jvp(z)

    match = "Forward-mode differentiation .* does not pass through backward='implicit'"
    with pytest.raises(ValueError, match=match):
        jvp(x, "implicit")
    with pytest.raises(ValueError, match=match):
        tf.function(lambda x: jvp(x, "implicit"))(x)
    layer = ki.layers.ForwardFPI(ki.layers.DenseCell(3), dtype="float64")
    layer(x)
    with pytest.raises(ValueError, match=match):
        with tf.autodiff.ForwardAccumulator(x, v):
            layer(x)
    # the unrolled mode's JVP is the exact one: (I - J)^{-1} df/dx v at z*
    z, _ = ki.fixed_point(f, tf.zeros_like(x), x, tol=1e-13, max_iter=300)
    s = 1 - np.tanh(z.numpy() @ w.numpy() + x.numpy()) ** 2  # row form: dz = (dz W + v) diag(s)
    expected = (v.numpy() * s) @ np.linalg.inv(np.eye(2) - w.numpy() * s)
    np.testing.assert_allclose(jvp(x, "unrolled").numpy(), expected, rtol=1e-8)


class _FrozenCell(keras.layers.Layer):
    """`tanh(z W + x u)` with a non-trainable `W` (a frozen or buffered weight)."""

    def __init__(self):
        super().__init__(dtype="float64", name="frozen_cell")
        self.state_size = 3

    def build(self, z_shape, x_shape):
        self.w = self.add_weight(shape=(3, 3), initializer=keras.initializers.RandomNormal(0, 0.3, seed=1),
                                 trainable=False, name="w")
        self.u = self.add_weight(shape=(3,), initializer="ones", name="u")

    def call(self, z, x):
        return tf.tanh(tf.matmul(z, self.w) + x * self.u)


@pytest.mark.parametrize("graph", [False, True])
def test_a_watched_non_trainable_variable_gets_its_implicit_gradient(graph):
    # tf.custom_gradient hands the implicit rule only the trainable variables a map reads:
    # a non-trainable one watched by the tape got None (unrolled gave the value)
    x = tf.constant(np.random.default_rng(0).uniform(size=(2, 3)))
    grads = {}
    for mode in ("implicit", "unrolled"):
        layer = ki.layers.ForwardFPI(_FrozenCell(), backward=mode, tol=1e-13, max_iter=300, dtype="float64")
        layer(x)
        w = layer.cell.w.value

        def run():
            with tf.GradientTape() as tape:
                tape.watch(w)
                loss = tf.reduce_sum(layer(x) ** 2)
            return tape.gradient(loss, w)

        grads[mode] = (tf.function(run)() if graph else run()).numpy()
    # and central finite differences of the implicit layer's loss
    w0, eps, fd = w.numpy(), 1e-6, np.zeros((3, 3))
    for i in range(3):
        for j in range(3):
            vals = []
            for sign in (1, -1):
                w.assign(w0 + sign * eps * np.eye(3)[i][:, None] * np.eye(3)[j][None, :])
                vals.append(float(tf.reduce_sum(layer(x) ** 2)))
            fd[i, j] = (vals[0] - vals[1]) / (2 * eps)
    w.assign(w0)
    np.testing.assert_allclose(grads["implicit"], grads["unrolled"], rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(grads["implicit"], fd, rtol=1e-6, atol=1e-9)
    assert np.abs(grads["implicit"]).max() > 1e-3


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_half_precision_residuals_neither_underflow_nor_overflow(dtype):
    # float16 squares: a residual of 1.2e-4 read as 0 (reported converged at tol 1e-4),
    # and a fixed point at 600 read as Inf (600^2 > 65504: reported NON_FINITE)
    z, info = ki.solvers.solve(lambda z: z + tf.constant(1.2e-4, dtype), tf.zeros([2, 1], dtype),
                               ki.solvers.FixedPointIteration(), tol=1e-4, max_iter=5)
    assert info.residual.dtype == tf.float32 and not info.converged.numpy().any()
    assert int(info.status) == ki.MAX_ITER_REACHED
    z, info = ki.fixed_point(lambda z: 0.5 * z + tf.constant(300.0, dtype), tf.zeros([2, 1], dtype),
                             solver="fixed_point", tol=1.0, max_iter=100)
    assert int(info.status) == ki.CONVERGED
    np.testing.assert_allclose(z.numpy().astype("float32"), 600.0, rtol=1e-2)


@pytest.mark.parametrize("solver", ["anderson", "broyden"])
@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_accelerated_solvers_work_in_float32_on_half_precision_states(solver, dtype):
    # Anderson's Gram matrix <r_i, r_j> and Broyden's secant products of residuals near
    # 300 overflow float16 (65504): both fell back to plain iteration (10 iterations
    # for this linear map instead of 2-3). Their arithmetic runs in float32; the map in half.
    seen = []

    def f(z):
        seen.append(z.dtype)
        return 0.5 * z + tf.constant(300.0, dtype)

    z, info = ki.fixed_point(f, tf.zeros([3, 4], dtype), solver=solver, tol=1.0, max_iter=50)
    assert z.dtype == dtype and set(seen) == {dtype}
    assert int(info.status) == ki.CONVERGED and int(info.iterations) <= 4, int(info.iterations)
    np.testing.assert_allclose(z.numpy().astype("float32"), 600.0, rtol=1e-2)
