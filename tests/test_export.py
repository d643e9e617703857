"""SavedModel export, checked in a process that imports only TensorFlow (`tests/tf_only.py`)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_implicit as ki
from keras_implicit.datasets import load_digits
from keras_implicit.layers import DenseCell, ForwardFPI
from tests import tf_only

ROOT = Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter: TensorFlow only, never keras_implicit.
TF_ONLY = r"""
import json, sys
import numpy as np
import tensorflow as tf
path, data = sys.argv[1], np.load(sys.argv[2])
loaded = tf.saved_model.load(path)
x = tf.constant(data["x"])
with tf.GradientTape() as tape:
    tape.watch(x)
    y = loaded.serve(x)
    loss = tf.reduce_sum(tf.sin(y))
grad = tape.gradient(loss, x)
fwd = loaded.signatures["fpi_forward"](x=tf.constant(data["h"]))
bwd = loaded.signatures["fpi_backward"](x=tf.constant(data["h"]), z_star=fwd["z_star"], dz=tf.constant(data["dz"]))
default = loaded.signatures["serving_default"](x=x)
assert "keras_implicit" not in sys.modules
np.savez(sys.argv[3], y=y.numpy(), grad=grad.numpy(), z_star=fwd["z_star"].numpy(),
         iterations=fwd["iterations"].numpy(), residual=fwd["residual"].numpy(),
         adjoint=bwd["adjoint"].numpy(), input_gradient=bwd["input_gradient"].numpy(),
         bwd_iterations=bwd["iterations"].numpy(), default=list(default.values())[0].numpy())
print(json.dumps(sorted(loaded.signatures.keys())))
"""


def _run_tf_only(script, *args):
    out = tf_only.run(script, *args)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


QUIET_RELOAD = r"""
import sys
import tensorflow as tf
loaded = tf.saved_model.load(sys.argv[1])
x = tf.ones([2, 10])
with tf.GradientTape() as tape:
    tape.watch(x)
    y = tf.reduce_sum(loaded.serve(x) ** 2)
g = tape.gradient(y, x)
assert g is not None and bool(tf.reduce_all(tf.math.is_finite(g)))
try:
    with tf.GradientTape() as outer:
        outer.watch(x)
        with tf.GradientTape() as inner:
            inner.watch(x)
            y = tf.reduce_sum(loaded.serve(x) ** 2)
        g = inner.gradient(y, x)
    outer.gradient(tf.reduce_sum(g), x)
    print("second-order: no error")
except LookupError as e:
    print("second-order:", e)
h = tf.ones([2, 8])
with tf.GradientTape() as tape:  # the forward signature serves z* only
    tape.watch(h)
    z = loaded.signatures["fpi_forward"](x=h)["z_star"]
print("forward gradient:", tape.gradient(tf.reduce_sum(z), h))
"""


def test_reload_is_quiet_and_second_order_fails_clearly(exported):
    _, path, _ = exported
    out = tf_only.run(QUIET_RELOAD, path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "unsaved custom gradients" not in out.stderr
    assert "Importing a function" not in out.stderr
    assert "second derivatives of an exported equilibrium layer are not saved" in out.stdout + out.stderr
    assert "forward gradient: None" in out.stdout, out.stdout  # not differentiable, and not saved as such


def test_the_tensorflow_only_process_captures_each_script_on_its_own():
    first = tf_only.run("import sys, tensorflow as tf\ntf.get_logger().warning('w-' + sys.argv[1])\nprint('o-1')", 7)
    assert first.returncode == 0 and "w-7" in first.stderr and first.stdout == "o-1\n", first
    second = tf_only.run("import sys\nprint('o-2')\nsys.exit(3)")
    assert second.returncode == 3 and second.stdout == "o-2\n" and "w-7" not in second.stderr, second
    third = tf_only.run("x = 1 / 0")
    assert third.returncode == 1 and "ZeroDivisionError" in third.stderr


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((10,), name="x")
    h = keras.layers.Dense(8, activation="tanh", name="pre")(inputs)
    z = ForwardFPI(DenseCell(6), tol=1e-6, name="fpi")(h)
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(z))
    path = tmp_path_factory.mktemp("export") / "sm"
    names = ki.export_saved_model(model, path)
    return model, path, names


def test_export_round_trip_in_tensorflow_only_process(exported, tmp_path):
    model, path, names = exported
    assert names == ["serve", "fpi_forward", "fpi_backward"]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 10)).astype("float32")
    pre = keras.Model(model.inputs, model.get_layer("pre").output)
    h = pre(x).numpy()
    dz = rng.standard_normal((5, 6)).astype("float32")
    np.savez(tmp_path / "in.npz", x=x, h=h, dz=dz)
    sigs = _run_tf_only(TF_ONLY, path, tmp_path / "in.npz", tmp_path / "out.npz")
    assert set(sigs) >= {"serve", "serving_default", "fpi_forward", "fpi_backward"}
    out = np.load(tmp_path / "out.npz")

    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = model(xt)
        loss = tf.reduce_sum(tf.sin(y))
    grad = tape.gradient(loss, xt)
    np.testing.assert_allclose(out["y"], y.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["default"], y.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["grad"], grad.numpy(), rtol=1e-4, atol=1e-6)

    layer = model.get_layer("fpi")
    z, info = layer.solve(tf.constant(h))
    np.testing.assert_allclose(out["z_star"], z.numpy(), rtol=1e-5, atol=1e-6)
    assert int(out["iterations"]) == int(info.iterations)
    c, dx, binfo = layer.backward_layer().solve(tf.constant(h), z, tf.constant(dz))
    np.testing.assert_allclose(out["adjoint"], c.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out["input_gradient"], dx.numpy(), rtol=1e-4, atol=1e-6)
    # the backward signature's input gradient is the live model's gradient w.r.t. the layer input
    ht = tf.constant(h)
    with tf.GradientTape() as tape:
        tape.watch(ht)
        lz = tf.reduce_sum(layer(ht) * dz)
    np.testing.assert_allclose(out["input_gradient"], tape.gradient(lz, ht).numpy(), rtol=1e-3, atol=1e-5)


def test_saved_model_cli_lists_the_signatures(exported):
    _, path, _ = exported
    cli = shutil.which("saved_model_cli")
    cmd = [cli] if cli else [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]
    out = subprocess.run(cmd + ["show", "--all", "--dir", str(path)], capture_output=True, text=True,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert out.returncode == 0, out.stderr[-2000:]
    for name in ("serving_default", "serve", "fpi_forward", "fpi_backward"):
        assert f"signature_def['{name}']" in out.stdout


def test_export_refuses_a_non_empty_directory_unless_overwrite(exported, tmp_path):
    model, path, _ = exported
    before = sorted(os.listdir(path))
    with pytest.raises(ValueError, match=r"overwrite=True.*Received: path="):
        ki.export_saved_model(model, path)
    assert sorted(os.listdir(path)) == before  # nothing was written
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match=r"must be a directory.*Received: path="):
        ki.export_saved_model(model, tmp_path / "f")
    target = tmp_path / "again"
    ki.export_saved_model(model, target)
    assert ki.export_saved_model(model, target, overwrite=True)[0] == "serve"
    x = np.ones((2, 10), "float32")
    loaded = tf.saved_model.load(str(target))  # keep it: its variables live with it
    np.testing.assert_allclose(loaded.serve(x).numpy(), model(x).numpy(), atol=1e-5)


def test_export_does_not_touch_training_metrics(exported):
    model, _, _ = exported
    layer = model.get_layer("fpi")
    assert layer.track_metrics is True


REFERENCE_CHECK = r"""
import json, sys
import numpy as np
import tensorflow as tf
loaded = tf.saved_model.load(sys.argv[1])
data = np.load(sys.argv[2])
logits = loaded.signatures["serving_default"](x=tf.constant(data["x"]))
logits = list(logits.values())[0].numpy()
assert "keras_implicit" not in sys.modules
print(json.dumps({"accuracy": float((logits.argmax(1) == data["y"]).mean())}))
"""


def test_bundled_reference_savedmodel_serves_digits(tmp_path):
    """saved_models/mondeq_digits is the export of `keras-implicit demo` (MonotoneDense)."""
    (_, _), (x_te, y_te) = load_digits()
    np.savez(tmp_path / "d.npz", x=x_te, y=y_te)
    result = _run_tf_only(REFERENCE_CHECK, ROOT / "saved_models" / "mondeq_digits", tmp_path / "d.npz")
    assert result["accuracy"] >= 0.97, result
