"""What serving and evaluation see: batch-independent outputs, honest logs, quiet conv training."""

import logging

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_implicit as ki
from keras_implicit.layers import DenseCell, ForwardFPI, LipschitzDense, MonotoneConv2D, MonotoneDense, MonotoneMultiscale

LAYERS = {
    "anderson": lambda: ForwardFPI(DenseCell(32), tol=1e-3),
    "broyden": lambda: ForwardFPI(DenseCell(32), solver="broyden", tol=1e-3),
    "fixed_point": lambda: ForwardFPI(DenseCell(32), solver="fixed_point", tol=1e-3),
    "monotone": lambda: MonotoneDense(32, tol=1e-3),
    "lipschitz": lambda: LipschitzDense(32, 5, tol=1e-3),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_a_sample_gets_the_same_output_in_any_batch(name):
    # Inputs of very different scales converge after different numbers of
    # iterations; a converged sample must stop changing while the batch goes on.
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((7, 16)) * np.arange(1, 8)[:, None] ** 2).astype("float32")
    layer = LAYERS[name]()
    batch = layer(x).numpy()
    alone = np.concatenate([layer(x[i:i + 1]).numpy() for i in range(7)])
    iterations = {int(layer.solve(x[i:i + 1])[1].iterations) for i in range(7)}
    assert len(iterations) > 1, "the samples should need different iteration counts"
    scale = np.abs(batch).max()
    # Float32 rounding of batched matmuls only (before: up to 2e-2 relative).
    np.testing.assert_allclose(alone, batch, rtol=0, atol=2e-6 * scale * max(iterations))


def test_converged_samples_keep_their_first_converged_iterate():
    # z -> 0.5 z + x: sample i converges when 0.5^k |x_i| <= tol.
    x = tf.constant([[1e-3], [1.0], [1e3]], tf.float64)
    z, info = ki.fixed_point(lambda z, x: 0.5 * z + x, tf.zeros_like(x), x, solver="fixed_point",
                             tol=1e-6, max_iter=100)
    for i in range(3):
        z1, info1 = ki.fixed_point(lambda z, x: 0.5 * z + x, tf.zeros_like(x[i:i + 1]), x[i:i + 1],
                                   solver="fixed_point", tol=1e-6, max_iter=100)
        assert float(z1[0, 0]) == float(z[i, 0])
        assert float(info1.residual[0]) == float(info.residual[i])


def test_validation_logs_carry_no_backward_iterations():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5,))
    z = ForwardFPI(DenseCell(4), name="fpi")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(z))
    model.compile("adam", "mse")
    x = np.random.default_rng(0).random((64, 5)).astype("float32")
    y = np.random.default_rng(1).random((64, 2)).astype("float32")
    hist = model.fit(x, y, validation_split=0.25, epochs=2, verbose=0)
    assert hist.history["fpi_bwd_iters"][-1] >= 1  # measured in training
    assert "val_fpi_bwd_iters" not in hist.history  # not measured in validation
    assert hist.history["val_fpi_fwd_iters"][-1] >= 1
    logs = model.evaluate(x, y, return_dict=True, verbose=0)
    assert "fpi_bwd_iters" not in logs and logs["fpi_fwd_iters"] >= 1


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_conv_training_logs_no_complex_cast_warning():
    handler = _Records()
    tf.get_logger().addHandler(handler)
    try:
        # The capture works: a differentiated float -> complex cast logs the warning.
        v = tf.Variable(1.0)
        with tf.GradientTape() as tape:
            y = tf.math.real(tf.cast(v, tf.complex64) * 2.0)
        tape.gradient(y, v)
        assert any("imaginary part" in m for m in handler.messages)
        handler.messages.clear()
        rng = np.random.default_rng(0)
        x = rng.random((8, 6, 6, 1)).astype("float32")
        y = rng.integers(0, 3, 8)
        for layer in (MonotoneConv2D(4, tol=1e-2), MonotoneMultiscale((4, 4), tol=1e-2)):
            inputs = keras.Input((6, 6, 1))
            out = keras.layers.Dense(3)(keras.layers.Flatten()(layer(inputs)))
            model = keras.Model(inputs, out)
            model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            model.fit(x, y, epochs=1, batch_size=4, verbose=0)
            with tf.GradientTape() as tape:  # and eagerly
                loss = tf.reduce_sum(model(x) ** 2)
            assert all(g is not None for g in tape.gradient(loss, model.trainable_variables))
    finally:
        tf.get_logger().removeHandler(handler)
    assert not [m for m in handler.messages if "imaginary part" in m]


@pytest.mark.xla
def test_an_unknown_batch_size_runs_the_loop_uncompiled_so_every_size_is_served_without_compiling(tmp_path):
    # With the XLA loop, every new batch size of a serving signature compiled the loop
    # again (1.2-1.6 s each, memory growing over 60 sizes).
    from tests import checks

    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,), name="x")
    model = keras.Model(inputs, keras.layers.Dense(3)(ForwardFPI(DenseCell(8), tol=1e-5, name="deq")(inputs)))
    x = np.random.default_rng(0).standard_normal((60, 6)).astype("float32")
    static = tf.function(lambda t: model(t))
    assert checks.xla_functions(static.get_concrete_function(tf.TensorSpec((4, 6))))  # a known size compiles
    ki.export_saved_model(model, str(tmp_path / "sm"))
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    assert not checks.xla_functions(loaded.signatures["serve"])
    for n in range(1, 61):
        served = loaded.serve(tf.constant(x[:n])).numpy()
        np.testing.assert_allclose(served, model(x[:n]).numpy(), atol=1e-5)
    # a server can reject what did not converge: the forward signature says so per sample
    dirty = x[:4].copy()
    dirty[2, 1] = np.nan
    forward = loaded.signatures["deq_forward"](x=tf.constant(dirty))
    assert forward["converged"].numpy().tolist() == [True, True, False, True]
