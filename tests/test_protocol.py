"""The solver/problem protocol: Halpern as a one-file solver, nested layer states."""

import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_implicit as ki
from keras_implicit import backward as backward_lib
from keras_implicit import solvers
from tests import checks, tf_only

F64 = {"dtype": "float64"}


def _rotation_problem(seed=0, n=4, k=2, angle=np.pi / 2):
    """T = P + R (I - P): identity on a k-dim subspace S, a rotation by `angle`
    on its complement. Nonexpansive (an isometry), Fix(T) = S, and plain
    iteration circles forever off S."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    basis, comp = q[:, :k], q[:, k:]
    p = basis @ basis.T
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    t = p + comp @ rot @ comp.T
    return tf.constant(t), p


def _run_compiled(problem, z0, solver, max_iter, tol=1e-12):
    @tf.function(jit_compile=True)
    def run(z):
        return solvers.solve(problem, z, solver, tol=tol, max_iter=max_iter)

    return run(z0)


def test_halpern_converges_to_the_fixed_point_nearest_the_initial_anchor():
    t, p = _rotation_problem()
    a = tf.constant(np.random.default_rng(1).standard_normal((3, 4)))
    z, info = _run_compiled(lambda z: tf.matmul(z, t, transpose_b=True), a, solvers.Halpern(), 2_000_000)
    np.testing.assert_allclose(z.numpy(), a.numpy() @ p.T, atol=1e-6)
    # plain iteration only rotates the start: never a fixed point
    _, plain = solvers.solve(lambda z: tf.matmul(z, t, transpose_b=True), a, solvers.FixedPointIteration(),
                             tol=1e-6, max_iter=1000)
    assert int(plain.status) == ki.MAX_ITER_REACHED


def test_halpern_problem_anchor_differs_from_the_start():
    t, p = _rotation_problem(seed=2, angle=2.0)
    a = tf.constant(np.random.default_rng(3).standard_normal((2, 4)))
    problem = solvers.Problem(lambda z, anchor: tf.matmul(z, t, transpose_b=True),
                              anchor=lambda anchor: anchor).bind(a)
    z0 = tf.constant(np.random.default_rng(4).standard_normal((2, 4)))
    # (Halpern's error here is about 2 / k: 1.0e-5 after 2e5 iterations, 1.0e-6 after 2e6)
    z, _ = _run_compiled(problem, z0, solvers.Halpern(anchor="problem"), 200_000)
    np.testing.assert_allclose(z.numpy(), a.numpy() @ p.T, atol=2e-5)
    # anchored at the start instead, it finds the fixed point nearest z0, another one
    z_start, _ = _run_compiled(problem, z0, solvers.Halpern(), 200_000)
    np.testing.assert_allclose(z_start.numpy(), z0.numpy() @ p.T, atol=2e-5)
    assert np.abs(z_start.numpy() - z.numpy()).max() > 0.1
    with pytest.raises(ValueError, match="no anchor.*Received: anchor='problem'"):
        solvers.solve(lambda z: z, z0, solvers.Halpern(anchor="problem"))


def test_halpern_settings_are_checked_and_serialize():
    assert solvers.get("halpern") == solvers.Halpern()
    h = solvers.Halpern(anchor="problem", beta=0.5)
    assert solvers.deserialize(solvers.serialize(h)) == h
    with pytest.raises(ValueError, match=r"Received: beta=0"):
        solvers.Halpern(beta=0)
    with pytest.raises(ValueError, match=r"Received: anchor='x'"):
        solvers.Halpern(anchor="x")


@pytest.mark.parametrize("backward", ["implicit", "phantom", "jacobian_free", "unrolled"])
def test_halpern_runs_with_every_backward_mode(backward):
    keras.utils.set_random_seed(0)
    layer = ki.layers.ForwardFPI(ki.layers.DenseCell(6, max_norm=0.5, **F64), solver="halpern",
                                 backward=backward, tol=1e-3, max_iter=3000, **F64)
    ref = ki.layers.ForwardFPI(ki.layers.DenseCell(6, max_norm=0.5, **F64), solver="anderson", tol=1e-10, **F64)
    x = tf.constant(np.random.default_rng(0).standard_normal((4, 5)))
    layer.build(x.shape)
    ref.build(x.shape)
    for a, b in zip(ref.weights, layer.weights):
        a.assign(b)
    with tf.GradientTape() as tape:
        tape.watch(x)
        z = layer(x)
        loss = tf.reduce_sum(tf.sin(z))
    grads = tape.gradient(loss, [x] + layer.trainable_variables)
    # Halpern's residual is O(1/k): its z* is within a few tol of the unique fixed point
    np.testing.assert_allclose(z.numpy(), ref(x).numpy(), atol=1e-2)
    assert all(np.isfinite(g.numpy()).all() for g in grads)


def _family_layers():
    return [
        lambda s: ki.layers.ForwardFPI(ki.layers.DenseCell(5), solver=s),
        lambda s: ki.layers.MonotoneDense(5, solver=s),
        lambda s: ki.layers.LipschitzDense(5, 3, solver=s),
        lambda s: ki.layers.FPINetwork(4, hidden=6, solver=s),
        lambda s: ki.layers.FPIGradientDescent(4, hidden=6, solver=s),
    ]


@pytest.mark.parametrize("make", _family_layers(), ids=["fpi", "mondeq", "lben", "fpi_nn", "fpi_gd"])
def test_halpern_runs_in_every_family_layer(make):
    keras.utils.set_random_seed(0)
    layer = make("halpern")
    x = tf.random.normal([3, 6])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y, _ = layer(x), None
        loss = tf.reduce_sum(tf.nest.flatten(y)[0])
    grads = tape.gradient(loss, [x] + layer.trainable_variables)
    assert all(g is not None and np.isfinite(g.numpy()).all() for g in grads)


# --- nested states -----------------------------------------------------------


@keras.saving.register_keras_serializable(package="keras_implicit_tests")
class TwoBlockCell(keras.layers.Layer):
    """(z_a [16], z_b [4, 4, 2]) -> coupled contractive update."""

    state_size = (16, (4, 4, 2))

    def build(self, z_shape, x_shape=None):
        self.u = self.add_weight(name="u", shape=(x_shape[-1], 16), initializer="glorot_uniform")
        self.w = self.add_weight(name="w", shape=(16, 16), initializer="orthogonal")
        self.v = self.add_weight(name="v", shape=(16, 32), initializer="glorot_uniform")
        self.k = self.add_weight(name="k", shape=(3, 3, 2, 2), initializer="glorot_uniform")

    def call(self, z, x):
        za, zb = z
        pooled = tf.reshape(zb, [-1, 32])[:, :16]
        za_new = tf.tanh(0.4 * tf.matmul(za, self.w) + tf.matmul(x, self.u) + 0.2 * pooled)
        conv = tf.nn.conv2d(zb, self.k, 1, "SAME")
        zb_new = tf.tanh(0.2 * conv + 0.3 * tf.reshape(tf.matmul(za_new, self.v), [-1, 4, 4, 2]))
        return za_new, zb_new

    def compute_output_shape(self, z_shape, x_shape=None):
        return z_shape


def _two_block_model(**kwargs):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,))
    za, zb = ki.layers.ForwardFPI(TwoBlockCell(), tol=1e-6, name="deq", **kwargs)(inputs)
    h = keras.layers.Concatenate()([za, keras.layers.Flatten()(zb)])
    return keras.Model(inputs, keras.layers.Dense(3)(h))


def test_two_block_state_trains_reports_blocks_and_round_trips(tmp_path):
    model = _two_block_model()
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((64, 8)).astype("float32"), rng.integers(0, 3, 64)
    hist = model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert hist.history["loss"][-1] < hist.history["loss"][0]
    for b in (0, 1):
        assert 0 <= hist.history[f"deq_fwd_res_{b}"][-1] <= 1e-6
    layer = model.get_layer("deq")
    (za, zb), info = layer.solve(tf.constant(x[:5]))
    assert za.shape == (5, 16) and zb.shape == (5, 4, 4, 2)
    assert info.block_residuals.shape == (5, 2)
    # each block's residual, measured in float64 at a loose tolerance (well above rounding)
    loose = ki.layers.ForwardFPI(TwoBlockCell(dtype="float64"), solver="fixed_point", tol=1e-3, **F64)
    xd = tf.constant(x[:5], tf.float64)
    (la, lb), linfo = loose.solve(xd)
    fa, fb = loose.cell((la, lb), xd)
    np.testing.assert_allclose(linfo.block_residuals[:, 0], tf.norm(fa - la, axis=1), rtol=1e-8)
    np.testing.assert_allclose(linfo.block_residuals[:, 1], tf.norm(tf.reshape(fb - lb, [5, -1]), axis=1),
                               rtol=1e-8)
    np.testing.assert_allclose(linfo.residual, tf.norm(tf.concat([fa - la, tf.reshape(fb - lb, [5, -1])], 1),
                                                       axis=1), rtol=1e-8)
    model.save(tmp_path / "two.keras")
    loaded = keras.models.load_model(tmp_path / "two.keras")
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), atol=1e-6)

    names = ki.export_saved_model(model, tmp_path / "export")
    assert names == ["serve", "deq_forward", "deq_backward"]
    np.save(tmp_path / "x.npy", x[:5])
    script = textwrap.dedent(f"""
        import numpy as np, tensorflow as tf
        m = tf.saved_model.load({str(tmp_path / 'export')!r})
        x = tf.constant(np.load({str(tmp_path / 'x.npy')!r}))
        fwd = m.signatures["deq_forward"](x=x)
        print(sorted(fwd))
        dz0, dz1 = tf.ones([5, 16]), tf.ones([5, 4, 4, 2])
        bwd = m.signatures["deq_backward"](x=x, z_star_0=fwd["z_star_0"], z_star_1=fwd["z_star_1"],
                                            dz_0=dz0, dz_1=dz1)
        print(sorted(bwd))
        np.save({str(tmp_path / 'dx.npy')!r}, bwd["input_gradient"].numpy())
        np.save({str(tmp_path / 'z1.npy')!r}, fwd["z_star_1"].numpy())
    """)
    out = tf_only.run(script)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "'block_residuals', 'converged', 'iterations', 'residual', 'z_star_0', 'z_star_1'" in out.stdout
    assert "'adjoint_0', 'adjoint_1', 'input_gradient', 'iterations'" in out.stdout
    np.testing.assert_allclose(np.load(tmp_path / "z1.npy"), zb.numpy(), atol=1e-5)
    # the served input gradient is the live layer's gradient of sum(za) + sum(zb)
    xt = tf.constant(x[:5])
    with tf.GradientTape() as tape:
        tape.watch(xt)
        za, zb = layer(xt)
        s = tf.reduce_sum(za) + tf.reduce_sum(zb)
    np.testing.assert_allclose(np.load(tmp_path / "dx.npy"), tape.gradient(s, xt).numpy(), rtol=1e-3, atol=1e-5)


def test_two_block_gradients_match_finite_differences():
    keras.utils.set_random_seed(1)
    layer = ki.layers.ForwardFPI(TwoBlockCell(dtype="float64"), tol=1e-12, max_iter=200, **F64)
    x = tf.constant(np.random.default_rng(2).standard_normal((3, 8)))
    layer.build(x.shape)
    r = [tf.constant(np.random.default_rng(s).standard_normal(shape)) for s, shape in
         ((3, (3, 16)), (4, (3, 4, 4, 2)))]

    def loss_of(z):
        return tf.reduce_sum(tf.sin(z[0]) * r[0]) + tf.reduce_sum(tf.sin(z[1]) * r[1])

    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = loss_of(layer(x))
    grads = tape.gradient(loss, [x] + layer.trainable_variables)
    rng = np.random.default_rng(5)
    checks.check_input_fd(lambda t: loss_of(layer(t)), x, grads[0], rng)
    checks.check_variables_fd(layer.trainable_variables, grads[1:], lambda: loss_of(layer(x)), rng)


def test_backward_fpi_on_a_nested_state_equals_the_forward_gradient():
    keras.utils.set_random_seed(1)
    layer = ki.layers.ForwardFPI(TwoBlockCell(dtype="float64"), tol=1e-12, max_iter=200, **F64)
    x = tf.constant(np.random.default_rng(2).standard_normal((3, 8)))
    layer.build(x.shape)
    z = layer(x)
    dz = (tf.ones_like(z[0]), tf.ones_like(z[1]))
    c, dx = layer.backward_layer(tol=1e-12, max_iter=200)((x, z, dz))
    assert c[0].shape == (3, 16) and c[1].shape == (3, 4, 4, 2)
    with tf.GradientTape() as tape:
        tape.watch(x)
        za, zb = layer(x)
        s = tf.reduce_sum(za) + tf.reduce_sum(zb)
    np.testing.assert_allclose(dx.numpy(), tape.gradient(s, x).numpy(), rtol=1e-8)


# --- eager calls ---------------------------------------------------------------


def test_eager_calls_use_one_cached_solve_for_every_batch_size():
    layer = ki.layers.ForwardFPI(ki.layers.DenseCell(8))
    for b in (1, 2, 3, 5, 8, 13, 21, 34, 55, 89):
        assert layer(tf.random.normal([b, 4])).shape == (b, 8)
    (fn,) = layer._compiled.functions.values()
    assert fn.experimental_get_tracing_count() <= 2
    # the op-by-op path gives the same numbers
    slow = ki.layers.ForwardFPI.from_config({**layer.get_config(), "compile_eager": False})
    slow.build((None, 4))
    slow.set_weights(layer.get_weights())
    x = tf.random.normal([6, 4])
    np.testing.assert_allclose(slow(x).numpy(), layer(x).numpy(), atol=1e-6)
    # a changed setting gets its own compiled solve
    layer.solver = solvers.get("broyden")
    layer(x)
    assert len(layer._compiled.functions) == 2


def test_eager_calls_still_warn_and_raise_on_non_convergence():
    layer = ki.layers.ForwardFPI(ki.layers.DenseCell(8, normalization=None), solver="fixed_point",
                                 max_iter=2, tol=1e-12)
    with pytest.warns(UserWarning, match="max_iter reached after 2 iterations"):
        layer(tf.random.normal([3, 4]))
    layer.on_failure = "raise"
    with pytest.raises(ki.ConvergenceError):
        layer(tf.random.normal([3, 4]))


def test_backward_modes_get_a_problem_not_a_function():
    """A custom backward mode sees a `solvers.Problem` and a `SolveSpec`, and
    solves through them without knowing the solver (here: a splitting one)."""
    seen = {}

    class Recording(backward_lib.BackwardMode):
        name = "recording_test"

        def apply(self, problem, z0, args, spec, callback=None):
            seen["problem"], seen["spec"] = problem, spec
            return spec.solve_without_gradient(problem.bind(*args), z0)

    layer = ki.layers.MonotoneDense(6, backward=Recording())
    z = layer(tf.random.normal([2, 3]))
    assert isinstance(seen["problem"], solvers.Problem)
    assert isinstance(seen["spec"], solvers.SolveSpec)
    assert z.shape == (2, 6)
