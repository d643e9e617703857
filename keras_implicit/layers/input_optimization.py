"""`InputOptimization`: a JIIO layer (Gurumurthy et al., NeurIPS 2021)."""

import keras
import tensorflow as tf

from keras_implicit import jiio
from keras_implicit.fixed_point import report_failure
from keras_implicit.layers.fpi import ForwardFPI


@keras.saving.register_keras_serializable(package="keras_implicit")
class InputOptimization(ForwardFPI):
    """Optimizes each sample's input of an equilibrium cell, jointly with the equilibrium.

    Called on `(x0, target)`, it returns `(x*, z*)` with

        x* = argmin_x loss(x, z, target)   subject to   z = cell(z, x),

    found by `keras_implicit.jiio.solve` from `x0` (one fixed point over
    `(z, x, mu)`, Anderson-accelerated; see that module for the iteration):
    latent optimization of a DEQ decoder (`target` the image, `x` its
    latent code), inverse problems (inpainting, denoising), adversarial
    perturbations (`x` the perturbed input in a ball around `x0`).

    Gradients. `z*` is re-attached at `x*` by the implicit function theorem
    (`backward`, default "implicit"), with `x*` held fixed (no gradient
    flows to `x0` or through the inner optimization). When the training loss
    is the inner loss itself this is its exact gradient in the cell's
    weights (the envelope theorem: `d/dtheta min_x loss = (d_theta cell)^T
    mu*`, `x*` being stationary); for another training loss (e.g. the clean
    loss of adversarial training) it is Danskin's rule, as the authors train.
    The adjoint is solved from `dL/dz*`, not warm-started from `mu*`: a Keras
    training loss is usually a batch mean, whose adjoint is `mu* / batch`
    only when it is the inner loss itself.

    Args:
        cell: a fixed-point cell `cell(z, x)` (as `ForwardFPI`'s).
        loss: `loss(x, z, target) -> [batch]`, one value per sample; a
            registered Keras serializable function for `get_config`.
        alpha_z, alpha_mu, alpha_x, switch, projection, normalize_step:
            as `jiio.solve` (`projection` e.g. `jiio.l2_ball(0.5)`).
        solver, tol, max_iter: of the joint solve (default Anderson, 1e-4,
            100); the re-attachment solves the DEQ alone with the same
            settings, from `z*` (one iteration).
        backward, on_failure, return_info, ...: as `ForwardFPI`.

    Example:

    >>> import numpy as np, tensorflow as tf, keras_implicit as ki
    >>> cell = ki.layers.DenseCell(4, normalization="spectral")
    >>> loss = lambda x, z, target: tf.reduce_sum((z - target) ** 2, 1) + 0.01 * tf.reduce_sum(x**2, 1)
    >>> layer = ki.layers.InputOptimization(cell, loss, alpha_x=0.2, tol=1e-6, max_iter=300)
    >>> x, z = layer((np.zeros((2, 3), "float32"), 0.1 * np.ones((2, 4), "float32")))
    >>> x.shape, z.shape
    (TensorShape([2, 3]), TensorShape([2, 4]))
    """

    def __init__(self, cell, loss, alpha_z=0.8, alpha_mu=0.6, alpha_x=0.1, switch=None, projection=None,
                 normalize_step=False, solver="anderson", tol=1e-4, max_iter=100, **kwargs):
        super().__init__(cell, solver=solver, tol=tol, max_iter=max_iter, **kwargs)
        if isinstance(loss, (dict, str)):
            loss = keras.saving.deserialize_keras_object(loss)
        if isinstance(projection, (dict, str)):
            projection = keras.saving.deserialize_keras_object(projection)
        if not callable(loss):
            raise ValueError(f"`loss` must be a callable loss(x, z, target) -> [batch]. Received: loss={loss!r}")
        if projection is not None and not callable(projection):
            raise ValueError(f"`projection` must be None or a callable P(x) -> x. Received: projection={projection!r}")
        self.alpha_z, self.alpha_mu, self.alpha_x, self.switch = jiio.check_steps(alpha_z, alpha_mu, alpha_x, switch)
        self.loss, self.projection, self.normalize_step = loss, projection, bool(normalize_step)
        self._joint = None

    def build(self, input_shape):
        if not (isinstance(input_shape, (tuple, list)) and len(input_shape) == 2
                and isinstance(input_shape[0], (tuple, list, tf.TensorShape))):
            raise ValueError("InputOptimization is called on a pair (x0, target). "
                             f"Received: input shapes {input_shape!r}")
        super().build(tuple(input_shape[0]))

    def joint_solve(self, x0, target, on_failure="ignore"):
        """`(x*, z*, mu*, info)` of the joint solve (no gradient)."""
        return jiio.solve(self.cell, lambda x, z: self.loss(x, z, target), self.initial_state(x0), x0,
                          alpha_z=self.alpha_z, alpha_mu=self.alpha_mu, alpha_x=self.alpha_x, switch=self.switch,
                          projection=self.projection, normalize_step=self.normalize_step, solver=self.solver,
                          tol=self.tol, max_iter=self.max_iter, on_failure=on_failure, jit_loop=self.jit_loop)

    def call(self, inputs):
        x0, target = inputs
        x0 = tf.convert_to_tensor(x0, self.compute_dtype)
        target = tf.nest.map_structure(lambda t: tf.convert_to_tensor(t, self.compute_dtype), target)
        if tf.executing_eagerly():
            if self._joint is None:  # eager calls run the loop compiled, as ForwardFPI's
                self._joint = tf.function(self.joint_solve, autograph=False, reduce_retracing=True)
            x, z, _, info = self._joint(x0, target)
            report_failure(info, self.on_failure, "JIIO solve")
        else:
            x, z, _, info = self.joint_solve(x0, target, self.on_failure)
        z, _ = self.solve(x, initial_state=z)  # z* re-attached at x* (its implicit gradient)
        if self.track_metrics:
            self._record_forward(z, info)
        return (x, z, info) if self.return_info else (x, z)

    def compute_output_spec(self, inputs):
        x0, _ = inputs
        z = super().compute_output_spec(x0)
        z = z[0] if self.return_info else z
        out = (keras.KerasTensor(x0.shape, dtype=self.compute_dtype), z)
        if not self.return_info:
            return out
        return out + (super().compute_output_spec(x0)[1],)

    def get_config(self):
        return {**super().get_config(), "loss": keras.saving.serialize_keras_object(self.loss),
                "alpha_z": self.alpha_z, "alpha_mu": self.alpha_mu, "alpha_x": self.alpha_x,
                "switch": None if self.switch is None else list(self.switch),
                "projection": None if self.projection is None else keras.saving.serialize_keras_object(
                    self.projection),
                "normalize_step": self.normalize_step}


__all__ = ["InputOptimization"]
