"""SolverBoard: solver traces and iteration histograms in TensorBoard event files."""

import glob

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_implicit as ki


def _events(log_dir):
    tags = {}
    for path in glob.glob(f"{log_dir}/solver/events.out.tfevents.*"):
        for record in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                tags.setdefault(value.tag, []).append((event.step, value))
    return tags


def test_solver_board_writes_trace_images_and_iteration_histograms(tmp_path):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 6)).astype("float32")
    y = rng.integers(0, 3, 64)
    inputs = keras.Input((6,))
    h = keras.layers.Dense(5, name="pre")(inputs)
    z = ki.layers.ForwardFPI(ki.layers.DenseCell(8), name="fpi")(h)
    z2 = ki.layers.MonotoneDense(8, name="mon")(z)
    model = keras.Model(inputs, keras.layers.Dense(3)(z2))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    board = ki.callbacks.SolverBoard(str(tmp_path), x[:5])
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[board])
    tags = _events(tmp_path)
    for layer in ("fpi", "mon"):
        assert [step for step, _ in tags[f"{layer}/residual_trace"]] == [0, 1]
        _, image = tags[f"{layer}/residual_trace"][-1]
        png = tf.make_ndarray(image.tensor)[2]  # [width, height, encoded PNG]
        assert tf.image.decode_png(png).shape[-1] == 4
        _, hist = tags[f"{layer}/iterations"][-1]
        counts = tf.make_ndarray(hist.tensor)  # [bins, 3]: left, right, count
        assert counts[:, 2].sum() == 5  # one count per probe sample
        # Each probe sample's count is its own solve's.
        pre = keras.Model(inputs, model.get_layer(layer).input)(x[:5])
        own = [int(model.get_layer(layer).solve(pre[i:i + 1])[1].iterations) for i in range(5)]
        assert counts[:, 0].min() <= min(own) and max(own) <= counts[:, 1].max()


def test_solver_board_with_one_layer_fed_by_the_model_input(tmp_path):
    inputs = keras.Input((6,))
    model = keras.Model(inputs, keras.layers.Dense(3)(ki.layers.MonotoneDense(8, name="mon")(inputs)))
    model.compile("adam", "mse")
    model.fit(np.ones((8, 6)), np.ones((8, 3)), epochs=1, verbose=0,
              callbacks=[ki.callbacks.SolverBoard(str(tmp_path), np.ones((3, 6)))])
    assert set(_events(tmp_path)) == {"mon/residual_trace", "mon/iterations", "mon/residual"}


def test_solver_board_needs_an_equilibrium_layer(tmp_path):
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    model.compile("adam", "mse")
    with pytest.raises(ValueError, match="no equilibrium layer"):
        model.fit(np.ones((4, 3)), np.ones((4, 2)), epochs=1, verbose=0,
                  callbacks=[ki.callbacks.SolverBoard(str(tmp_path), np.ones((2, 3)))])
