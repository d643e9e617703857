"""Multi-branch equilibrium: one branch is the dense GEQ; the joint map is a
contraction in the area-weighted max norm; exact gradients; clear errors."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_implicit.layers import GaussianEquilibrium, MultiBranchEquilibrium
from tests import checks

F64 = {"dtype": "float64"}


@pytest.mark.parametrize("kernel", ["gaussian", "linear"])
def test_one_branch_on_one_pixel_is_the_dense_geq(kernel):
    """1 x 1 images and 1 x 1 convolutions: `W_b` is a matrix; "linear" is GEQ's gamma -> 0."""
    x = np.random.default_rng(0).standard_normal((4, 1, 1, 5))
    mb = MultiBranchEquilibrium(6, scales=(1,), kernel_size=1, activation="tanh", kernel=kernel, gamma=0.05,
                                backward="implicit", tol=1e-13, max_iter=300, **F64)
    z = mb(x).numpy()[:, 0, 0]
    dense = GaussianEquilibrium(6, activation="tanh", gamma=0.05 if kernel == "gaussian" else 1e-12,
                                normalization=None, tol=1e-13, max_iter=300, **F64)
    dense.build(x[:, 0, 0].shape)
    dense.cell.gamma.assign(0.05 if kernel == "gaussian" else 1e-12)
    dense.cell.V.assign(mb.cell.weight(0).numpy()[0, 0].T)  # conv: z @ w; dense: z @ W^T
    dense.cell.kernel.assign(mb.cell.U[0].numpy()[0, 0])
    dense.cell.bias.assign(mb.cell.biases[0].numpy())
    np.testing.assert_allclose(dense(x[:, 0, 0]).numpy(), z, atol=1e-9)


def _random_layer(**kwargs):
    keras.utils.set_random_seed(0)
    layer = MultiBranchEquilibrium(3, scales=(1, 2, 4), patch_size=2, max_norm=0.8, readout=None, **F64, **kwargs)
    x = tf.constant(np.random.default_rng(1).standard_normal((2, 8, 8, 2)))
    layer(x)
    rng = np.random.default_rng(2)
    for v in layer.cell.V + layer.cell.U:
        v.assign(rng.standard_normal(v.shape))  # large: the bound acts
    return layer, x


def _same_conv_norm(w, shape):
    """`||conv(w)||_2` of the "same" convolution on `shape`, from its dense matrix."""
    n = int(np.prod(shape))
    basis = tf.reshape(tf.eye(n, dtype=w.dtype), (n,) + tuple(shape))
    return np.linalg.norm(tf.reshape(tf.nn.conv2d(basis, w, 1, "SAME"), (n, n)).numpy(), 2)


def test_each_convolution_is_bounded_by_max_norm_and_the_bound_is_tight():
    layer, _ = _random_layer(gamma=0.01)
    (kh, kw) = layer.cell.kernel_size
    for b, shape in enumerate(layer.cell.shapes):
        v = layer.cell.V[b].numpy()
        # rho_b: the circular convolution's norm on the zero-padded grid, from numpy's FFT and SVD
        grid = (shape[0] + kh - 1, shape[1] + kw - 1)
        transfer = np.fft.fft2(v, s=grid, axes=(0, 1))
        rho = np.linalg.svd(transfer, compute_uv=False).max()
        np.testing.assert_allclose(float(layer.cell.spectral_bound(b)), rho, rtol=1e-10)
        assert _same_conv_norm(layer.cell.V[b], shape) <= rho * (1 + 1e-12)
        assert _same_conv_norm(layer.cell.weight(b), shape) <= 0.8 * (1 + 1e-12)
    # on the finest (8 x 8) grid the border costs little: the bound does not shrink W much
    assert _same_conv_norm(layer.cell.weight(0), layer.cell.shapes[0]) >= 0.9 * 0.8


def test_the_joint_map_contracts_by_max_norm_squared():
    layer, x = _random_layer(gamma=0.01)
    rng = np.random.default_rng(3)

    def norm(z):  # max over branches of the area-weighted norm ||z_b|| s_b, per sample
        return np.max([np.sqrt(np.sum(t.numpy() ** 2, axis=(1, 2, 3)) * sh * sw)
                       for t, (sh, sw) in zip(z, layer.cell.scales)], axis=0)

    shapes = layer.cell.shapes
    for _ in range(10):
        a = tuple(tf.constant(rng.standard_normal((2,) + s)) for s in shapes)
        b = tuple(t + tf.constant(0.3 * rng.standard_normal(t.shape)) for t in a)
        ratio = norm([p - q for p, q in zip(layer.cell(a, x), layer.cell(b, x))]) / norm(
            [p - q for p, q in zip(a, b)])
        assert np.all(ratio <= 0.8**2 + 1e-12), ratio


def test_plain_iteration_reaches_the_equilibrium_of_every_branch():
    layer, x = _random_layer(gamma=0.01, solver="fixed_point", tol=1e-12, max_iter=300, return_info=True)
    z, info = layer(x)
    assert info.block_residuals.shape == (2, 3) and np.all(info.block_residuals.numpy() < 1e-12)
    fz = layer.cell(z, x)
    assert max(float(tf.reduce_max(tf.abs(a - b))) for a, b in zip(fz, z)) < 1e-11
    anderson = MultiBranchEquilibrium.from_config({**layer.get_config(), "solver": "anderson"})
    anderson(x)
    anderson.set_weights(layer.get_weights())
    for a, b in zip(anderson(x)[0], z):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-10)


def test_implicit_gradients_match_finite_differences_and_phantom_is_close():
    layer, x = _random_layer(gamma=0.01, backward="implicit", tol=1e-12, max_iter=300)
    r = [tf.constant(np.random.default_rng(4).standard_normal((2,) + s)) for s in layer.cell.shapes]

    def loss_of(t):
        return sum(tf.reduce_sum(tf.sin(z) * w) for z, w in zip(layer(t), r))

    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = loss_of(x)
    grads = tape.gradient(loss, [x] + layer.trainable_variables)
    rng = np.random.default_rng(5)
    checks.check_input_fd(loss_of, x, grads[0], rng)
    checks.check_variables_fd(layer.trainable_variables, grads[1:], lambda: loss_of(x), rng, jointly=True)
    phantom = MultiBranchEquilibrium.from_config({**layer.get_config(), "backward": "phantom"})
    phantom(x)
    phantom.set_weights(layer.get_weights())
    with tf.GradientTape() as tape:
        loss = sum(tf.reduce_sum(tf.sin(z) * w) for z, w in zip(phantom(x), r))
    approx = tape.gradient(loss, phantom.trainable_variables)
    flat = lambda gs: np.concatenate([g.numpy().ravel() for g in gs])  # noqa: E731
    cosine = flat(approx) @ flat(grads[1:]) / np.linalg.norm(flat(approx)) / np.linalg.norm(flat(grads[1:]))
    assert cosine > 0.9, cosine


def test_trains_with_auto_gamma_and_reports_each_branch(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), MultiBranchEquilibrium(4, patch_size=2, name="mb"),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.default_rng(0).uniform(size=(32, 8, 8, 1)).astype("float32")
    hist = model.fit(x, np.arange(32) % 3, batch_size=16, epochs=2, verbose=0)
    assert np.isfinite(hist.history["loss"]).all()
    assert {"mb_fwd_res_0", "mb_fwd_res_1"} <= set(hist.history)
    gamma = model.get_layer("mb").cell.gamma.numpy()
    assert np.all(gamma > 0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(loaded.get_layer("mb").cell.gamma.numpy(), gamma)
    np.testing.assert_allclose(loaded(x[:4]).numpy(), model(x[:4]).numpy(), atol=1e-5)


@pytest.mark.parametrize("kwargs,match", [
    ({"scales": (2, 1)}, r"scales=\(2, 1\)"),
    ({"scales": ((1, 1), (2, 1), (1, 2))}, r"scales=\(\(1, 1\), \(2, 1\), \(1, 2\)\)"),
    ({"scales": (2, 3)}, r"scales=\(2, 3\)"),
    ({"kernel": "rbf"}, "kernel='rbf'"),
    ({"gamma": 0}, "gamma=0"),
    ({"max_norm": 0}, "max_norm=0"),
    ({"readout": "mean"}, "readout='mean'"),
])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match="Received.*" + match):
        MultiBranchEquilibrium(4, **kwargs)


def test_signals_pool_along_the_width_only():
    layer = MultiBranchEquilibrium(4, scales=((1, 1), (1, 2), (1, 4)), patch_size=(1, 2), readout=None)
    z = layer(np.random.default_rng(0).standard_normal((2, 1, 16, 1)).astype("float32"))
    assert [tuple(t.shape) for t in z] == [(2, 1, 16, 4), (2, 1, 8, 4), (2, 1, 4, 4)]


def test_an_input_the_scales_do_not_divide_is_named():
    layer = MultiBranchEquilibrium(4, scales=(1, 2), patch_size=3)
    with pytest.raises(ValueError, match=r"Received: x.shape=\(2, 8, 8, 1\).*patch_size=\(3, 3\)"):
        layer(np.ones((2, 8, 8, 1), "float32"))
