"""Gradients inside fixed-point cells.

A cell that takes a gradient itself (FPI_GD's `x - eta grad_x E(x, y)`) runs
inside the solvers' forward loop, where `Implicit` stops all gradient tapes on
the thread (the forward's own derivative is replaced by the implicit one, and
stopping the tapes saves memory and lets the loop compile with XLA). A
`tf.GradientTape` opened there records nothing. `GradientOf` gives the cell
its gradient in every context:

* tapes recording (the adjoint's linearization, `Unrolled`, plain use): a
  `tf.GradientTape`, so the result is differentiable again (the backward
  pass of FPI_GD needs Hessian-vector products);
* tapes stopped, in a graph: `tf.gradients`, which does not use tapes
  (nothing differentiates this value, so nothing is lost);
* tapes stopped, eagerly: recording is restarted on the thread for the
  gradient's own tape and stopped again. Outer tapes then also record the
  energy's ops of each iteration (eager mode only: memory for debugging
  runs), which keeps the variables the cell reads visible to
  `tf.custom_gradient` (a `tf.function` would hide them).
"""

import tensorflow as tf

import contextlib


def tf_variable(variable):
    """The `tf.Variable` behind a Keras variable (what tapes watch; its
    `.value` is a cast copy inside a mixed-precision layer's call)."""
    return getattr(variable, "_value", variable)

try:
    from tensorflow.python import pywrap_tfe

    def recording_stopped():
        """Whether gradient tapes are stopped on this thread."""
        return bool(pywrap_tfe.TFE_Py_TapeSetIsStopped())

    @contextlib.contextmanager
    def _recording_restarted():
        pywrap_tfe.TFE_Py_TapeSetRestartOnThread()
        try:
            yield
        finally:
            pywrap_tfe.TFE_Py_TapeSetStopOnThread()
except ImportError:  # pragma: no cover - private TensorFlow API moved
    def recording_stopped():
        return False

    _recording_restarted = contextlib.nullcontext


class GradientOf:
    """`grad_x sum(fn(x, *args))` that works in every context of a solver.

    Args:
        fn: callable `fn(x, *args)` returning per-sample values (summed).

    Example:

    >>> import tensorflow as tf
    >>> grad = GradientOf(lambda x: 0.5 * tf.reduce_sum(x**2, axis=1))
    >>> grad(tf.constant([[1.0, -2.0]])).numpy().tolist()
    [[1.0, -2.0]]
    """

    def __init__(self, fn):
        self.fn = fn

    def _symbolic(self, x, *args):
        g = tf.gradients(tf.reduce_sum(self.fn(x, *args)), x)[0]
        return tf.zeros_like(x) if g is None else g

    def __call__(self, x, *args):
        if recording_stopped():
            if not tf.executing_eagerly():
                return self._symbolic(x, *args)
            with _recording_restarted():
                return self._taped(x, *args)
        return self._taped(x, *args)

    def _taped(self, x, *args):
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = tf.reduce_sum(self.fn(x, *args))
        return tape.gradient(value, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)


__all__ = ["GradientOf", "recording_stopped"]
