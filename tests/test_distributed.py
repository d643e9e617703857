import pytest
"""Training under tf.distribute.MirroredStrategy with two logical CPU devices."""

import json
import os
import subprocess
import sys

SCRIPT = r"""
import json
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
import keras_implicit as ki

rng = np.random.default_rng(0)
x = rng.standard_normal((128, 10)).astype("float32")
y = rng.integers(0, 3, 128)

def run(strategy):
    keras.utils.set_random_seed(0)
    with strategy.scope():
        inputs = keras.Input((10,))
        z = ki.layers.ForwardFPI(ki.layers.DenseCell(8), tol=1e-6, name="fpi")(inputs)
        model = keras.Model(inputs, keras.layers.Dense(3)(z))
        model.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    losses = []
    cb = keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: losses.append(float(logs["loss"])))
    hist = model.fit(x, y, batch_size=32, epochs=3, shuffle=False, verbose=0, callbacks=[cb])
    return losses, {k: v[-1] for k, v in hist.history.items()}

one, _ = run(tf.distribute.OneDeviceStrategy("/cpu:0"))
mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
two, logs = run(mirrored)
print(json.dumps({"one": one, "two": two, "replicas": mirrored.num_replicas_in_sync, "logs": logs}))
"""


@pytest.mark.slow
def test_mirrored_strategy_matches_single_device():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    one, two = result["one"], result["two"]
    assert len(one) == len(two) == 12
    for a, b in zip(one, two):
        assert abs(a - b) <= 1e-5 * max(1.0, abs(a)), (one, two)
    assert one[11] < one[3]  # it trained: the epoch mean of epoch 3 is below that of epoch 1
    assert result["logs"]["fpi_fwd_iters"] >= 1 and result["logs"]["fpi_bwd_iters"] >= 1
