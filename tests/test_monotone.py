"""monDEQ: monotone parameterization, splitting solvers, Theorem-3 backward (float64)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_implicit as ki
from tests import checks
from keras_implicit.layers import MonotoneCell, MonotoneDense
from keras_implicit.operators import DenseOperator

N, D, B = 7, 5, 4


def _layer(seed=0, m=0.5, **kwargs):
    keras.utils.set_random_seed(seed)
    kwargs.setdefault("tol", 1e-12)
    kwargs.setdefault("max_iter", 3000)
    layer = MonotoneDense(N, m=m, dtype="float64", return_info=True, **kwargs)
    layer.build((None, D))
    # larger A, B than the default init make the problem less trivial
    rng = np.random.default_rng(seed)
    layer.cell.A.assign(rng.standard_normal((N, N)) * 0.5)
    layer.cell.B.assign(rng.standard_normal((N, N)) * 0.5)
    layer.cell.bias.assign(rng.standard_normal(N) * 0.3)
    return layer


def _x(seed=1):
    return tf.constant(np.random.default_rng(seed).standard_normal((B, D)))


@pytest.mark.parametrize("weight_normalization", [False, True])
@pytest.mark.parametrize("m", [0.1, 1.0, 3.0])
def test_monotonicity_of_the_parameterization(m, weight_normalization):
    for seed in range(5):
        cell = MonotoneCell(N, m=m, weight_normalization=weight_normalization, dtype="float64")
        cell.build((None, N), (None, D))
        rng = np.random.default_rng(seed)
        cell.A.assign(rng.standard_normal((N, N)) * 3)
        cell.B.assign(rng.standard_normal((N, N)) * 3)
        if weight_normalization:
            cell.g.assign(2.5)
            cell.h.assign(-1.7)
        w = cell.implicit_weight().numpy()
        sym = (np.eye(N) - w + (np.eye(N) - w).T) / 2
        assert np.linalg.eigvalsh(sym).min() >= m - 1e-6


def test_operator_transpose_and_resolvent():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((N, N))
    op = DenseOperator(tf.constant(w))
    z, y = rng.standard_normal((B, N)), rng.standard_normal((B, N))
    lhs = np.sum(y * op.multiply(tf.constant(z)).numpy())
    rhs = np.sum(op.multiply_transpose(tf.constant(y)).numpy() * z)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-12)
    np.testing.assert_allclose(op.multiply(tf.constant(z)).numpy(), z @ w.T, rtol=1e-12)
    v = op.resolvent(0.7)
    want = np.linalg.inv(np.eye(N) + 0.7 * (np.eye(N) - w))
    np.testing.assert_allclose(v.multiply(tf.constant(z)).numpy(), z @ want.T, rtol=1e-10)
    np.testing.assert_allclose(v.multiply_transpose(tf.constant(z)).numpy(), z @ want, rtol=1e-10)


def test_unique_equilibrium_from_every_solver_and_start():
    x = _x()
    results = []
    for solver, alpha in [("forward_backward", 0.02), ("peaceman_rachford", 0.1),
                          ("peaceman_rachford", 1.0), ("peaceman_rachford", 10.0)]:
        layer = _layer(solver=solver, alpha=alpha, max_iter=20000, on_failure="raise")
        if solver == "forward_backward":
            assert alpha <= layer.forward_backward_bound()
        for start in range(3):
            z0 = tf.constant(np.random.default_rng(10 + start).standard_normal((B, N)) * 3)
            z, info = layer(x, initial_state=z0)
            assert int(info.status) == ki.CONVERGED
            w = layer.implicit_weight().numpy()
            pre = z.numpy() @ w.T + layer.cell.input_injection(x).numpy()
            assert np.abs(np.maximum(pre, 0) - z.numpy()).max() < 1e-6
            results.append(z.numpy())
    for z in results[1:]:
        np.testing.assert_allclose(z, results[0], atol=1e-8)


def _loss_grads(layer, x, r):
    with tf.GradientTape() as tape:
        tape.watch(x)
        z, _ = layer(x)
        loss = tf.reduce_sum(tf.sin(z) * r)
    return tape.gradient(loss, [x] + layer.trainable_variables), z


@pytest.mark.parametrize("solver,backward", [
    ("peaceman_rachford", "implicit"),
    ("forward_backward", "implicit"),
    ("peaceman_rachford", ki.backward.Implicit(solver="anderson", tol=1e-13, max_iter=500)),
])
def test_backward_equals_dense_adjoint_and_finite_differences(solver, backward):
    alpha = 0.02 if solver == "forward_backward" else 1.0
    layer = _layer(solver=solver, alpha=alpha, backward=backward, max_iter=20000)
    x = _x()
    r = tf.constant(np.random.default_rng(2).standard_normal((B, N)))
    grads, z = _loss_grads(layer, x, r)
    # dense: c = (I - J W)^{-T} dL/dz per sample, dL/dx = U J c
    w = layer.implicit_weight().numpy()
    u = layer.cell.kernel.numpy()
    dz = np.cos(z.numpy()) * r.numpy()
    gx = np.zeros((B, D))
    for i in range(B):
        j = np.diag((z.numpy()[i] > 0).astype(float))
        c = np.linalg.solve((np.eye(N) - j @ w).T, dz[i])
        gx[i] = u @ (j @ c)
    np.testing.assert_allclose(grads[0].numpy(), gx, rtol=1e-7, atol=1e-10)
    checks.check_variables_fd(layer.trainable_variables, grads[1:],
                              lambda: tf.reduce_sum(tf.sin(layer(x)[0]) * r), np.random.default_rng(4))


def test_splitting_backward_matches_generic_anderson_backward():
    x = _x()
    r = tf.constant(np.random.default_rng(2).standard_normal((B, N)))
    g1, _ = _loss_grads(_layer(), x, r)
    g2, _ = _loss_grads(_layer(backward=ki.backward.Implicit(solver="anderson", tol=1e-13, max_iter=500)), x, r)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-8, atol=1e-11)


def test_graph_and_xla_agree():
    layer = _layer(tol=1e-10, max_iter=500)
    x = _x()
    z_e, _ = layer(x)

    def step(x):
        with tf.GradientTape() as tape:
            z, info = layer(x)
            loss = tf.reduce_sum(z**2)
        return z, tape.gradient(loss, layer.trainable_variables)

    z_g, g_g = tf.function(step)(x)
    z_j, g_j = tf.function(step, jit_compile=True)(x)
    np.testing.assert_allclose(z_g.numpy(), z_e.numpy(), atol=1e-10)
    np.testing.assert_allclose(z_j.numpy(), z_e.numpy(), atol=1e-10)
    for a, b in zip(g_g, g_j):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-8, atol=1e-10)


def test_other_activations_with_alpha():
    x = _x()
    for act in (ki.prox.LeakyReLU(0.2), ki.prox.SoftThreshold(0.05)):
        zs = []
        for solver, alpha in (("peaceman_rachford", 0.3), ("peaceman_rachford", 3.0), ("anderson", 1.0)):
            layer = _layer(activation=act, solver=solver, alpha=alpha)
            z, info = layer(x)
            assert int(info.status) == ki.CONVERGED
            zs.append(z.numpy())
        np.testing.assert_allclose(zs[0], zs[1], atol=1e-9)
        np.testing.assert_allclose(zs[0], zs[2], atol=1e-9)


def test_keras_round_trip(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((D,))
    z = MonotoneDense(N, m=0.7, alpha=0.5, activation=ki.prox.LeakyReLU(0.3), weight_normalization=True, name="mon")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3)(z))
    x = np.random.randn(5, D).astype("float32")
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())
    layer = loaded.get_layer("mon")
    assert layer.alpha == 0.5 and layer.cell.m == 0.7 and layer.cell.weight_normalization
    assert layer.solver == ki.solvers.PeacemanRachford(0.5)
    assert sorted(v.name for v in layer.trainable_variables) == ["A", "B", "bias", "g", "h", "kernel"]


def test_tune_alpha_returns_the_fastest():
    layer = _layer(tol=1e-6, max_iter=1000)
    best, table = ki.layers.tune_alpha(layer, _x())
    assert table[best] == min(table.values())
    assert layer.solver.alpha == best


def test_bad_hyperparameters():
    for bad in (0, -1.0):
        with pytest.raises(ValueError, match=r"`m`.*Received: m="):
            MonotoneDense(4, m=bad)
        with pytest.raises(ValueError, match=r"`alpha`.*Received: alpha="):
            MonotoneDense(4, alpha=bad)
    with pytest.raises(ValueError, match=r"alpha = 1.*Received: alpha=0.5"):
        MonotoneDense(4, activation="tanh", alpha=0.5)
    MonotoneDense(4, activation="tanh", alpha=1.0)  # fine
    with pytest.raises(ValueError, match=r"Received: activation='swish'"):
        MonotoneDense(4, activation="swish")
    with pytest.raises(ValueError, match=r"splitting_problem|z = prox"):
        ki.layers.ForwardFPI(ki.layers.DenseCell(3), solver="peaceman_rachford")(tf.ones([2, 3]))


def test_forward_backward_above_its_bound_warns_and_reports():
    layer = _layer(solver="forward_backward", alpha=5.0, max_iter=200, tol=1e-8)
    assert layer.forward_backward_bound() < 5.0
    with pytest.warns(UserWarning, match="exceeds its convergence bound"):
        z, info = layer(_x())
    assert int(info.status) != ki.CONVERGED
    assert not info.converged.numpy().all()


# --- convolutional monDEQ ----------------------------------------------------

from keras_implicit.layers import MonotoneConv2D  # noqa: E402
from keras_implicit.operators import FourierOperator, kernel_spectrum  # noqa: E402

XC = (2, 4, 4, 2)  # images; with padding 1 the state is 6 x 6 x C


def _conv_layer(seed=0, m=0.5, filters=3, **kwargs):
    keras.utils.set_random_seed(seed)
    kwargs.setdefault("tol", 1e-12)
    kwargs.setdefault("max_iter", 5000)
    kwargs.setdefault("padding", 1)
    layer = MonotoneConv2D(filters, m=m, dtype="float64", return_info=True, **kwargs)
    layer.build(XC)
    rng = np.random.default_rng(seed)
    layer.cell.A.assign(rng.standard_normal(layer.cell.A.shape))
    layer.cell.B.assign(rng.standard_normal(layer.cell.B.shape))
    layer.cell.g.assign(2.0)
    layer.cell.h.assign(1.5)
    return layer


def _xc(seed=1):
    return tf.constant(np.random.default_rng(seed).standard_normal(XC))


def _circular_conv(z, k):
    ph, pw = (k.shape[0] - 1) // 2, (k.shape[1] - 1) // 2
    zp = np.concatenate([z[:, z.shape[1] - ph:], z, z[:, :ph]], axis=1)
    zp = np.concatenate([zp[:, :, zp.shape[2] - pw:], zp, zp[:, :, :pw]], axis=2)
    return tf.nn.conv2d(zp, k, 1, "VALID").numpy()


@pytest.mark.parametrize("spatial", [(6, 6), (5, 7), (1, 8)])
def test_kernel_spectrum_is_the_circular_convolution(spatial):
    rng = np.random.default_rng(0)
    k = rng.standard_normal((3, 3, 2, 4))
    op = FourierOperator(kernel_spectrum(tf.constant(k), spatial), spatial, tf.float64)
    # FourierOperator needs square per-frequency matrices: test c_in = c_out
    k = rng.standard_normal((3, 3, 3, 3))
    op = FourierOperator(kernel_spectrum(tf.constant(k), spatial), spatial, tf.float64)
    z = rng.standard_normal((2,) + spatial + (3,))
    got = op.multiply(tf.constant(z.reshape(2, -1))).numpy().reshape(z.shape)
    zz = np.concatenate([z] * 3, axis=1) if spatial[0] == 1 else z  # height 1: vertical taps wrap onto the row
    want = _circular_conv(zz, k)
    want = want[:, spatial[0]:2 * spatial[0]] if spatial[0] == 1 else want
    np.testing.assert_allclose(got, want, atol=1e-12)
    y = rng.standard_normal((2, op.size))
    np.testing.assert_allclose(np.sum(y * op.multiply(tf.constant(z.reshape(2, -1))).numpy()),
                               np.sum(op.multiply_transpose(tf.constant(y)).numpy() * z.reshape(2, -1)), rtol=1e-12)


@pytest.mark.parametrize("dtype", [tf.complex64, tf.complex128, tf.float64])
def test_inverse_through_the_real_form_equals_the_complex_inverse_and_compiles(dtype):
    from keras_implicit.operators import inverse

    rng = np.random.default_rng(0)
    m = rng.standard_normal((7, 4, 4)) + (1j * rng.standard_normal((7, 4, 4)) if dtype.is_complex else 0)
    m = tf.constant(m, dtype)
    tol = 1e-4 if dtype == tf.complex64 else 1e-11
    want = np.linalg.inv(m.numpy())
    np.testing.assert_allclose(inverse(m).numpy(), want, rtol=tol, atol=tol)
    # XLA has no complex MatrixInverse; this path compiles
    np.testing.assert_allclose(tf.function(inverse, jit_compile=True)(m).numpy(), want, rtol=tol, atol=tol)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_conv_operator_is_monotone_and_its_fft_resolvent_is_exact(seed):
    layer = _conv_layer(seed=seed, m=0.3)
    w = layer.implicit_weight().numpy()
    n = w.shape[0]
    assert n == 6 * 6 * 3
    sym = (2 * np.eye(n) - w - w.T) / 2
    assert np.linalg.eigvalsh(sym).min() >= 0.3 - 1e-6
    for alpha in (0.1, 1.0, 10.0):
        v = layer.cell.operator().resolvent(alpha).to_dense().numpy()
        want = np.linalg.inv(np.eye(n) + alpha * (np.eye(n) - w))
        np.testing.assert_allclose(v, want, atol=1e-10)


def test_conv_unique_equilibrium_from_every_solver():
    x = _xc()
    zs = []
    for solver, alpha in [("forward_backward", None), ("peaceman_rachford", 0.1),
                          ("peaceman_rachford", 1.0), ("peaceman_rachford", 10.0)]:
        layer = _conv_layer(solver=solver, alpha=alpha or 1.0)
        if solver == "forward_backward":
            layer = _conv_layer(solver=solver, alpha=0.9 * layer.forward_backward_bound(), max_iter=20000)
        z, info = layer(x)
        assert int(info.status) == ki.CONVERGED, (solver, alpha)
        fz = layer.cell(z, x)
        assert float(tf.reduce_max(tf.abs(fz - z))) < 1e-6
        # the border stays at zero
        assert float(tf.reduce_max(tf.abs(z[:, 0]))) == 0.0 and float(tf.reduce_max(tf.abs(z[:, :, -1]))) == 0.0
        zs.append(z.numpy())
    for z in zs[1:]:
        np.testing.assert_allclose(z, zs[0], atol=1e-7)


def test_conv_backward_equals_dense_adjoint_and_finite_differences():
    layer = _conv_layer()
    x = _xc()
    r = tf.constant(np.random.default_rng(2).standard_normal((2, 6, 6, 3)))
    with tf.GradientTape() as tape:
        tape.watch(x)
        z, _ = layer(x)
        loss = tf.reduce_sum(tf.sin(z) * r)
    grads = tape.gradient(loss, [x] + layer.trainable_variables)
    w = layer.implicit_weight().numpy()
    n = w.shape[0]
    dz = (np.cos(z.numpy()) * r.numpy()).reshape(2, -1)
    # dL/d(bias) = sum over pixels of J c, with c = (I - J W)^{-T} dz
    gb = np.zeros(3)
    for i in range(2):
        jac = np.diag(layer.cell.derivative(z[i:i + 1]).numpy().reshape(-1))
        c = np.linalg.solve((np.eye(n) - jac @ w).T, dz[i])
        gb += (jac @ c).reshape(6, 6, 3).sum((0, 1))
    bias_grad = grads[1 + [v.name for v in layer.trainable_variables].index("bias")]
    np.testing.assert_allclose(bias_grad.numpy(), gb, rtol=1e-8)
    checks.check_variables_fd(layer.trainable_variables, grads[1:],
                              lambda: tf.reduce_sum(tf.sin(layer(x)[0]) * r), np.random.default_rng(5))


def test_conv_keras_round_trip(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5, 5, 1))
    z = MonotoneConv2D(4, kernel_size=(3, 1), padding=2, m=0.8, name="conv")(inputs)
    out = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(z))
    model = keras.Model(inputs, out)
    assert model.get_layer("conv").output.shape == (None, 9, 9, 4)
    x = np.random.randn(3, 5, 5, 1).astype("float32")
    model.save(tmp_path / "c.keras")
    loaded = keras.models.load_model(tmp_path / "c.keras")
    np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())
    cell = loaded.get_layer("conv").cell
    assert (cell.kernel_size, cell.padding, cell.m, cell.filters) == ((3, 1), (2, 2), 0.8, 4)


def test_conv_padding_same_keeps_the_input_size(tmp_path):
    # "same" (the default) solves on the grid with a one-pixel zero border,
    # as padding=1, and returns the state without that border.
    kept = _conv_layer(seed=3, padding=1, tol=1e-10)
    same = MonotoneConv2D(3, m=0.5, dtype="float64", return_info=True, tol=1e-10, max_iter=5000)
    same.build(XC)
    for v, w in zip(same.weights, kept.weights):
        v.assign(w)
    x = _xc()
    full, _ = kept(x)
    out, _ = same(x)
    assert out.shape == XC[:3] + (3,) and full.shape == (2, 6, 6, 3)
    np.testing.assert_allclose(out.numpy(), full.numpy()[:, 1:-1, 1:-1], rtol=0, atol=1e-12)
    assert same.get_config()["padding"] == "same"
    inputs = keras.Input((5, 7, 1))
    layer = MonotoneConv2D(2, kernel_size=(3, 5), name="c")
    model = keras.Model(inputs, layer(inputs))
    assert model.output_shape == (None, 5, 7, 2) and layer.cell.padding == (1, 2)
    model.save(tmp_path / "s.keras")
    loaded = keras.models.load_model(tmp_path / "s.keras")
    xs = np.random.default_rng(0).standard_normal((2, 5, 7, 1)).astype("float32")
    np.testing.assert_array_equal(loaded(xs).numpy(), model(xs).numpy())
    with pytest.raises(ValueError, match="Received: padding='valid'"):
        MonotoneConv2D(2, padding="valid")


def test_conv_bad_input():
    with pytest.raises(ValueError, match=r"Received: kernel_size=2"):
        MonotoneConv2D(4, kernel_size=2)
    with pytest.raises(ValueError, match=r"Received: padding=-1"):
        MonotoneConv2D(4, padding=-1)
    with pytest.raises(ValueError, match=r"Received: x.shape=\(2, 8\)"):
        MonotoneConv2D(4)(tf.ones([2, 8]))


# --- multi-tier monDEQ -----------------------------------------------------

from keras_implicit.layers import MonotoneMultiscale  # noqa: E402


def _multiscale_layer(seed=0, m=0.5, stride=2, xshape=(2, 10, 10, 1), **kwargs):
    keras.utils.set_random_seed(seed)
    kwargs.setdefault("tol", 1e-12)
    kwargs.setdefault("max_iter", 5000)
    layer = MonotoneMultiscale((2, 3, 2), stride=stride, m=m, dtype="float64", return_info=True, **kwargs)
    layer.build(xshape)
    rng = np.random.default_rng(seed)
    for var in layer.cell.trainable_variables:
        if var.name.startswith(("A", "B")):
            var.assign(rng.standard_normal(var.shape))
        elif "scale" in var.name:
            var.assign(rng.uniform(0.5, 2.0))
    return layer


@pytest.mark.parametrize("stride,xshape", [(2, (2, 10, 10, 1)), ((1, 2), (2, 1, 10, 1))])
@pytest.mark.parametrize("seed", [0, 1])
def test_multiscale_operator_is_monotone_with_exact_resolvent(stride, xshape, seed):
    layer = _multiscale_layer(seed=seed, m=0.3, stride=stride, xshape=xshape, padding=(0, 1) if stride != 2 else 1)
    op = layer.cell.operator()
    w = op.to_dense().numpy()
    n = w.shape[0]
    assert np.linalg.eigvalsh(np.eye(n) - (w + w.T) / 2).min() >= 0.3 - 1e-6
    rng = np.random.default_rng(3)
    y, z = rng.standard_normal((2, n)), rng.standard_normal((2, n))
    np.testing.assert_allclose(np.sum(y * op.multiply(tf.constant(z)).numpy()),
                               np.sum(op.multiply_transpose(tf.constant(y)).numpy() * z), rtol=1e-10)
    for alpha in (0.1, 1.0, 10.0):
        want = np.linalg.inv(np.eye(n) + alpha * (np.eye(n) - w))
        res = op.resolvent(alpha)
        np.testing.assert_allclose(res.to_dense().numpy(), want, atol=1e-10)
        np.testing.assert_allclose(res.multiply_transpose(tf.constant(y)).numpy(), y @ want, atol=1e-10)
    # ||I - W|| (the forward-backward bound's) from per-frequency blocks, no n x n matrix
    blocks = op.frequency_blocks()
    s = 4 if stride == 2 else 2
    assert blocks.shape[-2:] == (2 * s * s + 3 * s + 2,) * 2 and blocks.shape[:2] == op.shapes[-1][:2]
    np.testing.assert_allclose(op.identity_minus_norm(), np.linalg.svd(np.eye(n) - w, compute_uv=False)[0],
                               rtol=1e-12)


def test_multiscale_equilibrium_and_gradients():
    x = tf.constant(np.random.default_rng(1).standard_normal((2, 10, 10, 1)))
    zs = []
    for solver, alpha in (("peaceman_rachford", 0.3), ("peaceman_rachford", 3.0), ("forward_backward", None)):
        layer = _multiscale_layer(solver=solver, alpha=alpha or 1.0)
        if solver == "forward_backward":
            layer = _multiscale_layer(solver=solver, alpha=0.9 * layer.forward_backward_bound(), max_iter=20000)
        z, info = layer(x)
        assert int(info.status) == ki.CONVERGED and z.shape == (2, 3, 3, 2)
        zs.append(z.numpy())
    for z in zs[1:]:
        np.testing.assert_allclose(z, zs[0], atol=1e-8)
    layer = _multiscale_layer()
    r = tf.constant(np.random.default_rng(2).standard_normal((2, 3, 3, 2)))
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(tf.sin(layer(x)[0]) * r)
    grads = tape.gradient(loss, [x] + layer.trainable_variables)
    # dense adjoint through the flat state
    z_full, _ = layer.solve(x)
    w = layer.implicit_weight().numpy()
    n = w.shape[0]
    last = 3 * 3 * 2
    dz = np.zeros((2, n))
    dz[:, n - last:] = (np.cos(z_full.numpy()[:, n - last:]) * r.numpy().reshape(2, -1))
    gb = np.zeros(2)
    for i in range(2):
        jac = np.diag(layer.cell.derivative(z_full[i:i + 1]).numpy().reshape(-1))
        c = np.linalg.solve((np.eye(n) - jac @ w).T, dz[i])
        gb += (jac @ c)[:12 * 12 * 2].reshape(12, 12, 2).sum((0, 1))
    names = [v.name for v in layer.trainable_variables]
    np.testing.assert_allclose(grads[1 + names.index("bias")].numpy(), gb, rtol=1e-7)
    checks.check_variables_fd(layer.trainable_variables, grads[1:],
                              lambda: tf.reduce_sum(tf.sin(layer(x)[0]) * r), np.random.default_rng(6))


# tiers 24, 12 and 6 wide: wide enough that no convolution reaches from a tier's
# last interior column to its first one without wrapping around
@pytest.mark.parametrize("stride,xshape,padding", [(2, (2, 22, 22, 1), 1), ((1, 2), (2, 1, 22, 1), (0, 1))])
def test_every_tier_has_a_zero_border_and_no_convolution_wraps_around(stride, xshape, padding):
    layer = _multiscale_layer(seed=1, stride=stride, xshape=xshape, padding=padding)
    cell = layer.cell
    x = tf.constant(np.random.default_rng(2).standard_normal(xshape))
    z, _ = layer.solve(x)
    borders = cell.borders
    assert borders == [cell.padding] * 3  # kernel 3: the radius 1 is the padding here
    for tier, (bh, bw) in zip(cell.split_tiers(z), borders):
        t = tier.numpy()
        assert np.all(t[:, :, :bw] == 0) and np.all(t[:, :, t.shape[2] - bw:] == 0)
        assert np.all(t[:, :bh] == 0) and np.all(t[:, t.shape[1] - bh:] == 0)
        assert np.abs(t).max() > 0
    # A coarse tier's last interior column changed: through a circular convolution
    # it reaches the first columns (wrapping around); with every border held at zero
    # no tier's first interior column, nor its left border, sees it.
    base = cell.split_tiers(cell(z, x))
    for i in (1, 2):
        tiers = cell.split_tiers(z)
        h, w, _ = cell.shapes[i]
        bh, bw = borders[i]
        bump = np.zeros(tiers[i].shape)
        bump[:, bh:h - bh, w - 1 - bw] = 0.5
        tiers[i] = tiers[i] + bump
        moved = cell.split_tiers(cell(tf.concat([tf.reshape(t, [2, -1]) for t in tiers], 1), x))
        changed = max(float(tf.reduce_max(tf.abs(a - b))) for a, b in zip(moved, base))
        assert changed > 1e-3  # the perturbation does act
        for a, b, (_, bw_j) in zip(moved, base, borders):
            # (up to the FFT's rounding, which mixes every pixel)
            np.testing.assert_allclose(a.numpy()[:, :, :bw_j + 1], b.numpy()[:, :, :bw_j + 1], atol=1e-12)


def test_multiscale_round_trip_and_bad_input(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((1, 10, 1))
    z = MonotoneMultiscale((4, 6), stride=(1, 2), padding=(0, 1), name="ms")(inputs)
    assert z.shape == (None, 1, 6, 6)
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(z)))
    x = np.random.randn(3, 1, 10, 1).astype("float32")
    model.save(tmp_path / "ms.keras")
    loaded = keras.models.load_model(tmp_path / "ms.keras")
    np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())
    assert loaded.get_layer("ms").cell.stride == (1, 2)
    with pytest.raises(ValueError, match=r"divisible by the stride.*Received: x.shape=\(2, 5, 5, 1\)"):
        MonotoneMultiscale((2, 2), stride=2, padding=1)(tf.ones([2, 5, 5, 1]))
    with pytest.raises(ValueError, match=r"Received: filters="):
        MonotoneMultiscale(())
    with pytest.raises(ValueError, match=r"Tier 2 is 2 x 2, and its zero border of \(1, 1\) leaves no pixel inside.*"
                                         r"Received: x.shape=\(2, 6, 6, 1\)"):
        MonotoneMultiscale((2, 2, 2), stride=2, padding=1)(tf.ones([2, 6, 6, 1]))
