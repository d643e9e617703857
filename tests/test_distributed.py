"""Training under tf.distribute: MirroredStrategy (two logical CPU devices) and
MultiWorkerMirroredStrategy (two worker processes on loopback)."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

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


@pytest.mark.xla
@pytest.mark.slow
def test_mirrored_strategy_matches_single_device():
    # XLA-compiled solver loops inside replica contexts, as users get them
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_IMPLICIT_JIT_LOOPS="1")
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


# --- MultiWorkerMirroredStrategy: two worker processes on loopback ---------------------
# Keras 3.15's model.fit fails under MultiWorkerMirroredStrategy before the first step
# (Trainer._maybe_symbolic_build reduces a PerReplica batch; a plain Dense model fails
# the same way), so the workers train with a custom loop (strategy.run), the documented
# way to use this strategy with TensorFlow 2.21.

WORKER = r"""
import json, os, sys
import numpy as np
import tensorflow as tf
mode = sys.argv[1]
strategy = (tf.distribute.MultiWorkerMirroredStrategy() if mode == "multi"
            else tf.distribute.OneDeviceStrategy("/cpu:0"))
import keras
import keras_implicit as ki

GLOBAL_BATCH = 32
rng = np.random.default_rng(0)
x = rng.standard_normal((128, 10)).astype("float32")
y = rng.integers(0, 3, 128)
keras.utils.set_random_seed(0)
with strategy.scope():
    inputs = keras.Input((10,))
    z = ki.layers.ForwardFPI(ki.layers.DenseCell(8), tol=1e-6, name="fpi")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3)(z))
    optimizer = keras.optimizers.SGD(0.1)
    optimizer.build(model.trainable_variables)
loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
data = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)
dist = strategy.experimental_distribute_dataset(data)


@tf.function
def train_step(xb, yb):
    def replica_step(xb, yb):
        with tf.GradientTape() as tape:
            per_sample = loss_fn(yb, model(xb, training=True))
            loss = tf.nn.compute_average_loss(per_sample, global_batch_size=GLOBAL_BATCH)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return loss

    return strategy.reduce("SUM", strategy.run(replica_step, args=(xb, yb)), axis=None)


losses = []
for epoch in range(2):
    for xb, yb in dist:
        losses.append(float(train_step(xb, yb)))
print(json.dumps({"losses": losses, "replicas": strategy.num_replicas_in_sync,
                  "fwd_iters": float(model.get_layer("fpi").fwd_iters_metric.result()),
                  "bwd_iters": model.get_layer("fpi").bwd_iters_metric.result()}, default=float))
"""


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _result(out):
    return json.loads(out.strip().splitlines()[-1])


def _single_worker_in_this_process(capsys):
    """The one-worker reference, run here while the two workers run (a third
    interpreter cost one more TensorFlow import)."""
    argv = sys.argv
    sys.argv = ["worker", "single"]
    try:
        exec(compile(WORKER, "<worker>", "exec"), {"__name__": "__worker__"})
    finally:
        sys.argv = argv
    return capsys.readouterr().out


@pytest.mark.slow
def test_two_workers_match_one_worker_per_batch(capsys):
    # uncompiled solver loops (as in the rest of the suite, see conftest.py):
    # each interpreter compiled them for every new shape
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_IMPLICIT_JIT_LOOPS="0")
    env.pop("TF_CONFIG", None)
    cluster = {"worker": [f"localhost:{p}" for p in _free_ports(2)]}
    workers = []
    for index in range(2):
        worker_env = dict(env, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        workers.append(subprocess.Popen([sys.executable, "-c", WORKER, "multi"], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, env=worker_env))
    try:
        single = _single_worker_in_this_process(capsys)
        outs = [w.communicate(timeout=600) for w in workers]
    finally:  # no worker outlives a failure here
        for w in workers:
            if w.poll() is None:
                w.kill()
    for w, (_, err) in zip(workers, outs):
        assert w.returncode == 0, err[-3000:]
    one = _result(single)
    two = [_result(out) for out, _ in outs]
    assert one["replicas"] == 1 and all(r["replicas"] == 2 for r in two)
    assert len(one["losses"]) == 8
    for r in two:  # each worker sees the global batch's loss, as one worker does
        np.testing.assert_allclose(r["losses"], one["losses"], rtol=1e-5, atol=1e-6)
        assert r["fwd_iters"] >= 1 and r["bwd_iters"]["fpi_bwd_iters"] >= 1
    assert one["losses"][4] < one["losses"][0]  # it trained: the first batch's loss fell
