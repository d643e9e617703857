"""FPI_NN and FPI_GD (Jeon, Lee & Choi): fixed points, exact gradients, second order, export (float64)."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_implicit as ki
from keras_implicit.layers import EnergyDescentCell, FPIGradientDescent, FPINetwork
from tests import tf_only

F64 = dict(dtype="float64", tol=1e-12, max_iter=400, stop_mode="abs", on_failure="raise")


@keras.saving.register_keras_serializable(package="tests")
class QuadraticEnergy(keras.layers.Layer):
    """`E(x, y) = x^T Q x / 2 - y^T x` with a fixed `Q > 0` (argmin `Q^-1 y`)."""

    def __init__(self, q, **kwargs):
        super().__init__(**kwargs)
        self.q = np.asarray(q)

    def call(self, x, y):
        qx = tf.matmul(x, tf.constant(self.q, x.dtype))
        return 0.5 * tf.reduce_sum(x * qx, axis=1) - tf.reduce_sum(y * x, axis=1)

    def get_config(self):
        return {**super().get_config(), "q": self.q.tolist()}


def _spd(n, seed=0):
    a = np.random.default_rng(seed).standard_normal((n, n))
    return a @ a.T / n + 0.5 * np.eye(n)


def _network(seed=0, units=4, features=5, **kwargs):
    keras.utils.set_random_seed(seed)
    layer = FPINetwork(units, hidden=8, **{**F64, **kwargs})
    layer.build((None, features))
    return layer


def _gd(seed=0, units=4, features=5, **kwargs):
    keras.utils.set_random_seed(seed)
    layer = FPIGradientDescent(units, hidden=8, step_size=0.5, l2=1.0, **{**F64, **kwargs})
    layer.build((None, features))
    rng = np.random.default_rng(seed)
    for w in layer.trainable_variables:
        w.assign(rng.standard_normal(w.shape) * 0.5)
    return layer


def _y(seed=1, batch=3, features=5):
    return tf.constant(np.random.default_rng(seed).standard_normal((batch, features)))


def test_fpi_network_output_is_a_fixed_point():
    layer = _network()
    y = _y()
    x = layer(y)
    np.testing.assert_array_less(np.abs(x - layer.cell(x, y)), 1e-6)


def test_fpi_gd_quadratic_energy_converges_to_the_argmin():
    q = _spd(4)
    step = 1.0 / np.linalg.eigvalsh(q)[-1]  # < 2 / lambda_max
    for solver in ("fixed_point", "anderson"):
        layer = FPIGradientDescent(4, energy=QuadraticEnergy(q, dtype="float64"), step_size=step, output_activation=None,
                                   solver=solver, **{**F64, "max_iter": 2000})
        y = _y(features=4)
        x = layer(y)
        np.testing.assert_allclose(x, np.linalg.solve(q, y.numpy().T).T, atol=1e-9)
        np.testing.assert_array_less(np.abs(layer.cell.gradient(x, y)), 1e-9)


def test_fpi_gd_gradient_equals_dense_solve():
    q = _spd(4, seed=2)
    layer = FPIGradientDescent(4, energy=QuadraticEnergy(q, dtype="float64"), step_size=0.3, output_activation=None, **F64)
    y = _y(features=4)
    r = _y(seed=3, features=4)
    with tf.GradientTape() as tape:
        tape.watch(y)
        loss = tf.reduce_sum(layer(y) * r)
    # x* = Q^-1 y, so dL/dy = Q^-T r
    np.testing.assert_allclose(tape.gradient(loss, y), np.linalg.solve(q.T, r.numpy().T).T, atol=1e-9)


def _grads(layer, y, r, initial_state=None):
    with tf.GradientTape() as tape:
        tape.watch(y)
        loss = tf.reduce_sum(layer(y, initial_state=initial_state) * r)
    return tape.gradient(loss, [y] + layer.trainable_variables)


@pytest.mark.parametrize("make", [_network, _gd], ids=["fpi_nn", "fpi_gd"])
def test_gradients_match_unrolled_and_finite_differences(make):
    layer = make()
    y, r = _y(), _y(seed=4, features=4)
    implicit = _grads(layer, y, r)
    unrolled = make(backward="unrolled", solver="fixed_point", tol=1e-300, max_iter=300, on_failure="ignore")
    for a, b in zip(unrolled.weights, layer.weights):
        a.assign(b)
    for g_imp, g_unr in zip(implicit, _grads(unrolled, y, r)):
        np.testing.assert_allclose(g_imp, g_unr, rtol=1e-6, atol=1e-10)
    rng = np.random.default_rng(5)
    h = 1e-6
    for target, g in zip([None] + layer.trainable_variables, implicit):
        d = rng.standard_normal(g.shape)
        if target is None:
            vals = [float(tf.reduce_sum(layer(y + s * h * d) * r)) for s in (1, -1)]
        else:
            base = target.numpy()
            vals = []
            for s in (1, -1):
                target.assign(base + s * h * d)
                vals.append(float(tf.reduce_sum(layer(y) * r)))
            target.assign(base)
        fd = (vals[0] - vals[1]) / (2 * h)
        assert abs(fd - float(np.sum(g.numpy() * d))) <= 1e-6 * max(1.0, abs(fd))


@pytest.mark.parametrize("make", [_network, _gd], ids=["fpi_nn", "fpi_gd"])
def test_gradient_does_not_depend_on_the_initial_iterate(make):
    layer = make()
    y, r = _y(), _y(seed=4, features=4)
    start = tf.constant(np.random.default_rng(6).uniform(size=(3, 4)))
    for a, b in zip(_grads(layer, y, r), _grads(layer, y, r, initial_state=start)):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "graph"])
def test_second_order_gradient_penalty_and_hvp_match_finite_differences(compile):
    layer = _gd(seed=7)
    y, r = _y(seed=8), _y(seed=9, features=4)
    kernel = layer.cell.energy.kernel

    def penalized():
        # loss + ||dL/dy||^2: training on it differentiates the implicit gradient
        with tf.GradientTape() as inner:
            inner.watch(y)
            loss = tf.reduce_sum(layer(y) * r)
        gy = inner.gradient(loss, y)
        return loss + tf.reduce_sum(gy**2)

    def grad_kernel():
        with tf.GradientTape() as outer:
            value = penalized()
        return outer.gradient(value, kernel)

    def hvp(v):
        # Hessian of L w.r.t. y applied to v
        with tf.GradientTape() as outer:
            outer.watch(y)
            with tf.GradientTape() as inner:
                inner.watch(y)
                loss = tf.reduce_sum(layer(y) * r)
            gy = inner.gradient(loss, y)
            gv = tf.reduce_sum(gy * v)
        return outer.gradient(gv, y)

    if compile:
        grad_kernel, hvp = tf.function(grad_kernel), tf.function(hvp)
    g = grad_kernel().numpy()
    rng = np.random.default_rng(10)
    d = rng.standard_normal(g.shape)
    base = kernel.numpy()
    h = 1e-5
    vals = []
    for s in (1, -1):
        kernel.assign(base + s * h * d)
        vals.append(float(penalized()))
    kernel.assign(base)
    fd = (vals[0] - vals[1]) / (2 * h)
    assert abs(fd - np.sum(g * d)) <= 1e-6 * max(1.0, abs(fd))

    v = tf.constant(rng.standard_normal(y.shape))

    def gy_at(yv):
        with tf.GradientTape() as tape:
            tape.watch(yv)
            loss = tf.reduce_sum(layer(yv) * r)
        return tape.gradient(loss, yv)

    fd_hvp = (gy_at(y + h * v) - gy_at(y - h * v)) / (2 * h)
    np.testing.assert_allclose(hvp(v), fd_hvp, rtol=1e-6, atol=1e-8)


TF_ONLY = r"""
import json, sys
import numpy as np
import tensorflow as tf
path, data = sys.argv[1], np.load(sys.argv[2])
loaded = tf.saved_model.load(path)
y = tf.constant(data["y"])
out = {}
for kind in ("fpi_nn", "fpi_gd"):
    fwd = loaded.signatures[f"{kind}_forward"](x=y)
    bwd = loaded.signatures[f"{kind}_backward"](x=y, z_star=fwd["z_star"], dz=tf.constant(data["dz"]))
    out[f"{kind}_z_star"] = fwd["z_star"].numpy()
    out[f"{kind}_input_gradient"] = bwd["input_gradient"].numpy()
assert "keras_implicit" not in sys.modules
np.savez(sys.argv[3], **out)
print(json.dumps(sorted(loaded.signatures.keys())))
"""


def test_exported_backward_signatures_reproduce_the_input_gradient(tmp_path):
    # both models in one export, checked in one TensorFlow-only process
    keras.utils.set_random_seed(0)
    y_in = keras.Input((5,), name="x")
    layers = {
        "fpi_nn": FPINetwork(4, hidden=8, tol=1e-6, name="fpi_nn"),
        "fpi_gd": FPIGradientDescent(4, hidden=8, step_size=0.5, l2=1.0, output_activation=None, tol=1e-6,
                                     name="fpi_gd"),
    }
    outputs = [layers[kind](y_in) for kind in ("fpi_nn", "fpi_gd")]
    model = keras.Model(y_in, outputs)
    x = np.random.default_rng(0).standard_normal((6, 5)).astype("float32")
    target = np.random.default_rng(1).uniform(size=(6, 4)).astype("float32")
    model.compile("adam", ["mse", "mse"])
    model.fit(x, [target, target], epochs=2, verbose=0)
    dz = np.random.default_rng(2).standard_normal((6, 4)).astype("float32")
    xt = tf.constant(x)
    live = {}
    for kind, layer in layers.items():
        with tf.GradientTape() as tape:
            tape.watch(xt)
            out = layer(xt)
            loss = tf.reduce_sum(out * dz)
        live[kind] = out.numpy(), tape.gradient(loss, xt).numpy()
    path = tmp_path / "sm"
    ki.export_saved_model(model, str(path))
    np.savez(tmp_path / "in.npz", y=x, dz=dz)
    proc = tf_only.run(TF_ONLY, path, tmp_path / "in.npz", tmp_path / "out.npz")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {"fpi_nn_forward", "fpi_nn_backward", "fpi_gd_forward", "fpi_gd_backward", "serve"} <= set(
        json.loads(proc.stdout.strip().splitlines()[-1]))
    res = np.load(tmp_path / "out.npz")
    for kind, (z_star, grad) in live.items():
        np.testing.assert_allclose(res[f"{kind}_z_star"], z_star, atol=1e-4)
        np.testing.assert_allclose(res[f"{kind}_input_gradient"], grad, rtol=1e-3, atol=1e-4)


def test_keras_round_trip(tmp_path):
    y_in = keras.Input((5,))
    out = FPIGradientDescent(4, hidden=8, step_size=0.5)(y_in)
    out2 = FPINetwork(4, hidden=8)(y_in)
    model = keras.Model(y_in, [out, out2])
    x = np.random.default_rng(0).standard_normal((3, 5)).astype("float32")
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras")
    for a, b in zip(again(x), model(x)):
        np.testing.assert_allclose(a, b, atol=1e-6)


# --- bad input ------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0.0, -0.5, "1"])
def test_bad_step_size(bad):
    with pytest.raises(ValueError, match="Received: step_size="):
        FPIGradientDescent(4, step_size=bad)


class _VectorEnergy(keras.layers.Layer):
    def call(self, x, y):
        return x * 2.0


def test_energy_must_be_scalar_per_sample():
    layer = FPIGradientDescent(4, energy=_VectorEnergy())
    with pytest.raises(ValueError, match="Received: energy output shape"):
        layer(np.zeros((2, 5), "float32"))


def test_mismatched_shapes():
    layer = FPINetwork(4, hidden=8)
    layer(np.zeros((2, 5), "float32"))
    with pytest.raises(ValueError, match="Received: initial_state.shape=\\(2, 3\\)"):
        layer(np.zeros((2, 5), "float32"), initial_state=np.zeros((2, 3), "float32"))
    with pytest.raises(ValueError, match=r"same batch size as the inputs \(2\). Received: initial_state.shape=\(3, 4\)"):
        layer(np.zeros((2, 5), "float32"), initial_state=np.zeros((3, 4), "float32"))
    with pytest.raises(ValueError, match="Received: y.shape=\\(2, 5, 1\\)"):
        FPINetwork(4)(np.zeros((2, 5, 1), "float32"))
    with pytest.raises(ValueError, match="Received: energy="):
        EnergyDescentCell(4, energy="not a layer")
