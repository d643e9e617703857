"""Family layers under the `mixed_float16` policy: eager calls (notebooks, custom
loops) and a training step, against the same weights in float32."""

import keras
import numpy as np
import pytest

from keras_implicit import layers as L

LAYERS = {
    "ForwardFPI": lambda: L.ForwardFPI(L.DenseCell(8)),
    # MonotoneDense and LipschitzDense are not here: in float16 their splitting
    # iteration turns non-finite at once (reported as a warning; open issue).
    "OptEqDense": lambda: L.OptEqDense(8, max_norm=0.9),  # its SVD runs in float32
    "GaussianEquilibrium": lambda: L.GaussianEquilibrium(8, patch_size=4),
}


@pytest.fixture
def mixed():
    keras.mixed_precision.set_global_policy("mixed_float16")
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_eager_half_precision_call_matches_float32(name, mixed):
    x = np.random.default_rng(0).uniform(size=(6, 5)).astype("float32")
    keras.utils.set_random_seed(0)
    half = LAYERS[name]()
    y = half(x)
    assert y.dtype == "float16" and np.isfinite(y.numpy()).all()
    keras.mixed_precision.set_global_policy("float32")
    full = LAYERS[name]()
    full(x)
    full.set_weights(half.get_weights())
    np.testing.assert_allclose(y.numpy().astype("float32"), full(x).numpy(), atol=2e-2)


def test_half_precision_training_step_is_finite(mixed):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5,)), L.GaussianEquilibrium(8, patch_size=4, name="geq"),
                              L.ForwardFPI(L.DenseCell(8), name="deq"), keras.layers.Dense(2, dtype="float32")])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.default_rng(1).uniform(size=(16, 5)).astype("float32")
    hist = model.fit(x, np.arange(16) % 2, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(hist.history["loss"][0])
    assert np.isfinite(hist.history["geq_fwd_res"][0]) and np.isfinite(hist.history["deq_fwd_res"][0])
    assert float(model.get_layer("geq").cell.gamma) > 0
