"""Keras callbacks that show what the solvers do during training."""

import io

import keras
import numpy as np
import tensorflow as tf

from keras_implicit import validation
from keras_implicit.export import fpi_layers
from keras_implicit.layers.fpi import ForwardFPI


def _trace_png(traces, iterations, title):
    """A PNG (bytes) of per-sample residual-vs-iteration curves on a log scale."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=80)
    for trace, its in zip(traces, iterations):
        ax.semilogy(np.arange(1, its + 1), np.maximum(trace[:its], 1e-30), lw=0.8, alpha=0.6)
    ax.set_xlabel("iteration")
    ax.set_ylabel("residual")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


class SolverBoard(keras.callbacks.Callback):
    """Writes solver diagnostics of a fixed probe batch to TensorBoard each epoch.

    For every `ForwardFPI`-based layer of the model (every equilibrium layer
    of the package) it solves each probe sample on its own and writes, under
    `log_dir/solver`:

    * `<layer>/residual_trace`: an image of the residual-vs-iteration curve
      of every probe sample (log scale);
    * `<layer>/iterations`: a histogram of the per-sample iteration counts;
    * `<layer>/residual`: a histogram of the per-sample final residuals.

    The probe samples are solved one at a time, so each count is that
    sample's own (a batch runs until its slowest sample converges). The
    layer's input is computed by the model's layers before it, as in
    training.

    Args:
        log_dir: TensorBoard log directory (the one of
            `keras.callbacks.TensorBoard`, to see both together).
        probe: a batch of model inputs (at most `max_samples` are used).
        max_samples: default 16.
        every: write every `every` epochs, default 1.

    Example:

    >>> import tempfile, numpy as np, keras_implicit as ki
    >>> board = ki.callbacks.SolverBoard(tempfile.mkdtemp(), np.zeros((32, 64)), max_samples=8)
    >>> board.probe.shape
    (8, 64)
    >>> model.fit(x, y, callbacks=[keras.callbacks.TensorBoard("logs"), board])  # doctest: +SKIP

    Then `tensorboard --logdir logs`: the Images tab shows the traces and the
    Histograms tab the iteration counts.
    """

    def __init__(self, log_dir, probe, max_samples=16, every=1):
        super().__init__()
        self.log_dir = str(log_dir)
        validation.integer(max_samples, "max_samples")
        self.every = validation.integer(every, "every")
        self.probe = tf.nest.map_structure(lambda t: np.asarray(t)[:max_samples], probe)
        self._writer = None

    def _layer_inputs(self, layers):
        """Each layer's input on the probe batch (a model from the inputs to those tensors)."""
        inputs = self.model.inputs
        inputs = inputs[0] if len(inputs) == 1 else inputs
        out = keras.Model(inputs, [layer.input for layer in layers])(self.probe, training=False)
        if len(layers) == 1:
            return [out[0] if isinstance(out, (list, tuple)) else out]
        return list(out)

    def on_epoch_end(self, epoch, logs=None):
        if epoch % self.every:
            return
        layers = [layer for layer in fpi_layers(self.model) if isinstance(layer, ForwardFPI)]
        if not layers:
            raise ValueError(
                "SolverBoard found no equilibrium layer (ForwardFPI or a family layer) in "
                f"the model. Received: model={self.model.name!r}"
            )
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir + "/solver")
        inputs = self._layer_inputs(layers)
        with self._writer.as_default(step=epoch):
            for layer, x in zip(layers, inputs):
                traces, iterations, residuals = [], [], []
                for i in range(int(tf.nest.flatten(x)[0].shape[0])):
                    _, info = layer.solve(tf.nest.map_structure(lambda t: t[i:i + 1], x))
                    traces.append(info.trace.numpy())
                    iterations.append(int(info.iterations))
                    residuals.append(float(info.residual[0]))
                png = _trace_png(traces, iterations, f"{layer.name}, epoch {epoch}")
                image = tf.image.decode_png(png, channels=4)[None]
                tf.summary.image(f"{layer.name}/residual_trace", image)
                tf.summary.histogram(f"{layer.name}/iterations", np.asarray(iterations, np.float32))
                tf.summary.histogram(f"{layer.name}/residual", np.asarray(residuals, np.float32))
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


__all__ = ["SolverBoard"]
