"""Every layer family under `mixed_float16` and `mixed_bfloat16`: eager calls
(notebooks, custom loops) against the same weights in float32, finite gradients
of a training step, `fit`, and (slow) accuracy on digits within 1 point of
float32 (`examples/mixed_precision_digits.py`)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_implicit import layers as L
from keras_implicit.layers.precision import float32_under_half

VEC, IMG = (6, 5), (4, 6, 6, 1)

# name -> (factory, input shape, computes in float32 under a mixed policy)
FAMILIES = {
    "ForwardFPI": (lambda: L.ForwardFPI(L.DenseCell(8)), VEC, False),
    "FPINetwork": (lambda: L.FPINetwork(4, hidden=8), VEC, False),
    "FPIGradientDescent": (lambda: L.FPIGradientDescent(4, hidden=8, l2=0.5), VEC, True),
    "MonotoneDense": (lambda: L.MonotoneDense(8), VEC, True),
    "MonotoneDense_forward_backward": (lambda: L.MonotoneDense(8, solver="forward_backward", alpha=0.1), VEC, True),
    "MonotoneConv2D": (lambda: L.MonotoneConv2D(3), IMG, True),
    "MonotoneMultiscale": (lambda: L.MonotoneMultiscale((2, 3)), IMG, True),
    "LipschitzDense": (lambda: L.LipschitzDense(8, 3), VEC, True),
    "LipschitzConv2D": (lambda: L.LipschitzConv2D(2, 3), IMG, True),
    "OptEqDense": (lambda: L.OptEqDense(8, max_norm=0.9), VEC, True),
    "GaussianEquilibrium": (lambda: L.GaussianEquilibrium(8, patch_size=4), VEC, False),
    "MultiBranchEquilibrium": (lambda: L.MultiBranchEquilibrium(2, scales=(1, 2)), IMG, False),
    "LinearDEQ": (lambda: L.LinearDEQ(4, output_units=2), VEC, True),
    "SingleIndexDEQ": (lambda: L.SingleIndexDEQ("tanh"), VEC, False),
    "SLLDense": (lambda: L.SLLDense(8), VEC, True),
    "CPLDense": (lambda: L.CPLDense(8), VEC, True),
    "AOLDense": (lambda: L.AOLDense(8), VEC, True),
    "SandwichDense": (lambda: L.SandwichDense(8), VEC, True),
    "SLLConv2D": (lambda: L.SLLConv2D(2), IMG, True),
}
POLICIES = {"mixed_float16": ("float16", 2e-2), "mixed_bfloat16": ("bfloat16", 1e-1)}


@pytest.fixture(params=sorted(POLICIES))
def policy(request):
    keras.mixed_precision.set_global_policy(request.param)
    yield request.param
    keras.mixed_precision.set_global_policy("float32")


def _inputs(shape):
    return np.random.default_rng(0).uniform(size=shape).astype("float32")


# (half-precision cells stop near their format's resolution, above the default tol: warned)
@pytest.mark.filterwarnings("ignore:fixed-point solve. max_iter reached")
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_eager_call_matches_float32_and_gradients_are_finite(name, policy):
    make, shape, needs_float32 = FAMILIES[name]
    half_dtype, atol = POLICIES[policy]
    x = _inputs(shape)
    keras.utils.set_random_seed(0)
    mixed = make()
    y = mixed(x)
    assert mixed.compute_dtype == ("float32" if needs_float32 else half_dtype)
    assert y.dtype == mixed.compute_dtype and np.isfinite(y.numpy().astype("float32")).all()
    keras.mixed_precision.set_global_policy("float32")
    full = make()
    full(x)
    full.set_weights(mixed.get_weights())
    if needs_float32:  # the same float32 computation
        np.testing.assert_allclose(y.numpy(), full(x).numpy(), rtol=1e-5, atol=1e-6)
    else:
        np.testing.assert_allclose(y.numpy().astype("float32"), full(x).numpy(), atol=atol)

    # a training step of a model holding the layer, with a half-precision head
    keras.mixed_precision.set_global_policy(policy)
    inputs = keras.Input(shape[1:])
    h = keras.layers.Flatten()(mixed(inputs))
    model = keras.Model(inputs, keras.layers.Activation("linear", dtype="float32")(keras.layers.Dense(2)(h)))
    labels = np.arange(shape[0]) % 2
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, model(x, training=True),
                                                                          from_logits=True))
    grads = tape.gradient(loss, model.trainable_variables)
    assert np.isfinite(float(loss))
    for v, g in zip(model.trainable_variables, grads):
        assert g is not None, v.path
        assert g.dtype == v.dtype == "float32" and np.isfinite(g.numpy()).all(), v.path
    # a gradient reaches the equilibrium layer's weights (all but the head's)
    assert sum(float(tf.reduce_sum(tf.abs(g))) for g in grads[:-2]) > 0


def test_fit_logs_finite_solver_metrics_in_both_precisions(policy):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5,)), L.GaussianEquilibrium(8, patch_size=4, name="geq"),
                              L.MonotoneDense(8, name="mon"), L.ForwardFPI(L.DenseCell(8), name="deq"),
                              keras.layers.Dense(2, dtype="float32")])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    hist = model.fit(_inputs((16, 5)), np.arange(16) % 2, batch_size=8, epochs=1, verbose=0)
    for key in ("loss", "geq_fwd_res", "mon_fwd_res", "deq_fwd_res", "deq_bwd_res"):
        assert np.isfinite(hist.history[key][0]), key
    assert float(model.get_layer("geq").cell.gamma) > 0


def test_float32_families_keep_an_explicit_or_full_precision_policy():
    assert float32_under_half(True, "mixed_float16") == "float32"
    assert float32_under_half(True, "float64") == "float64"
    assert float32_under_half(False, "mixed_bfloat16") == "mixed_bfloat16"
    assert L.MonotoneDense(4, dtype="float64").compute_dtype == "float64"
    layer = L.MonotoneDense(4, dtype="mixed_float16")
    assert layer.compute_dtype == layer.cell.compute_dtype == "float32"
    # a config saved under a mixed policy rebuilds the same layer
    assert L.MonotoneDense.from_config(layer.get_config()).compute_dtype == "float32"


@pytest.mark.slow
def test_digits_accuracy_within_one_point_of_float32():
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).parents[1] / "examples" / "mixed_precision_digits.py"
    spec = importlib.util.spec_from_file_location("mixed_precision_digits", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    from keras_implicit.datasets import load
    # families that iterate in half precision (the others compute in float32);
    # mean test accuracy over two seeds (single seeds differ by a few samples)
    table = example.compare(["geq", "single_index"], load("digits"), epochs=3, seeds=(0, 1))
    for family, row in table.items():
        assert row["mixed_float16"]["deq_compute_dtype"] == "float16", family
        for policy, r in row.items():
            assert r["finite_gradients"], (family, policy)
            assert abs(r["delta"]) <= 1.0, (family, policy, r)
        assert row["float32"]["accuracy"] > 0.7, family  # it trained
