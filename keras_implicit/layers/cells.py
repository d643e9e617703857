"""Ready-made cells `f(z, x) -> z` for `ForwardFPI`."""

import keras
import tensorflow as tf
from keras_implicit import validation

NORMALIZATIONS = (None, "weight", "spectral")


@keras.saving.register_keras_serializable(package="keras_implicit")
class DenseCell(keras.layers.Layer):
    """A dense equilibrium cell `f(z, x) = act(z W + x U + b)`.

    With a 1-Lipschitz activation (`tanh`, `relu`, ...) the map `z -> f(z, x)`
    is a contraction whenever `||W||_2 < 1`, and then the fixed point exists,
    is unique and plain iteration reaches it. `normalization` keeps it so
    while training:

    * `"weight"` (default): `W = g V / ||V||_F` with a learned scalar `g`
      clipped to `[-max_norm, max_norm]` (weight normalization; since
      `||W||_2 <= ||W||_F = |g|`, the bound holds exactly).
    * `"spectral"`: `W = V min(1, max_norm / sigma(V))` with `sigma(V)`
      estimated by `power_iterations` steps of the power method from a fixed
      start vector (an estimate from below, so the bound is approximate).
    * `None`: `W = V`, unconstrained.

    Args:
        units: int, size of the state `z`.
        activation: activation, default `"tanh"`.
        use_bias: bool, default True.
        normalization: `"weight"`, `"spectral"` or `None`; default `"weight"`.
        max_norm: float in (0, 1) recommended, the bound on `||W||_2`;
            default 0.9.
        power_iterations: int >= 1, for `"spectral"`; default 10.
        kernel_initializer: for `U`, default `"glorot_uniform"`.
        recurrent_initializer: for `V`, default `"orthogonal"`.
        bias_initializer: default `"zeros"`.
        kernel_regularizer, recurrent_regularizer, bias_regularizer: optional.

    Call arguments:
        z: state, shape `[batch, units]`.
        x: input, shape `[batch, input_dim]`.

    Returns:
        The next state, shape `[batch, units]`.

    Example:

    >>> import keras, keras_implicit as ki
    >>> layer = ki.layers.ForwardFPI(ki.layers.DenseCell(32))
    >>> layer(keras.ops.ones((4, 8))).shape
    TensorShape([4, 32])
    """

    def __init__(
        self,
        units,
        activation="tanh",
        use_bias=True,
        normalization="weight",
        max_norm=0.9,
        power_iterations=10,
        kernel_initializer="glorot_uniform",
        recurrent_initializer="orthogonal",
        bias_initializer="zeros",
        kernel_regularizer=None,
        recurrent_regularizer=None,
        bias_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        validation.integer(units, "units")
        validation.one_of(normalization, "normalization", NORMALIZATIONS)
        validation.number(max_norm, "max_norm")
        validation.integer(power_iterations, "power_iterations")
        self.units = units
        self.state_size = units
        self.activation = keras.activations.get(activation)
        self.use_bias = use_bias
        self.normalization = normalization
        self.max_norm = float(max_norm)
        self.power_iterations = power_iterations
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.recurrent_initializer = keras.initializers.get(recurrent_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.recurrent_regularizer = keras.regularizers.get(recurrent_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)

    def build(self, z_shape, x_shape=None):
        validation.features(x_shape, "DenseCell")
        if len(z_shape) != 2 or z_shape[-1] != self.units:
            raise ValueError(
                f"DenseCell expects a state of shape (batch, {self.units}). "
                f"Received: z.shape={tuple(z_shape)}"
            )
        self.kernel = self.add_weight(
            name="kernel",
            shape=(x_shape[-1], self.units),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
        )
        self.recurrent_kernel = self.add_weight(
            name="recurrent_kernel",
            shape=(self.units, self.units),
            initializer=self.recurrent_initializer,
            regularizer=self.recurrent_regularizer,
        )
        if self.normalization == "weight":
            self.norm_scale = self.add_weight(
                name="norm_scale",
                shape=(),
                initializer=keras.initializers.Constant(0.5 * self.max_norm),
            )
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias",
                shape=(self.units,),
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
            )

    def effective_recurrent_kernel(self):
        """The matrix `W` actually used, after normalization."""
        v = tf.convert_to_tensor(self.recurrent_kernel)
        if self.normalization == "weight":
            g = tf.clip_by_value(tf.cast(self.norm_scale, v.dtype), -self.max_norm, self.max_norm)
            return g * v / (tf.norm(v) + 1e-12)
        if self.normalization == "spectral":
            u = tf.ones([self.units, 1], v.dtype) / self.units**0.5
            for _ in range(self.power_iterations):
                u = tf.matmul(v, tf.matmul(v, u, transpose_a=True))
                u = u / (tf.norm(u) + 1e-12)
            sigma = tf.norm(tf.matmul(v, u, transpose_a=True))
            return v * tf.minimum(1.0, self.max_norm / (sigma + 1e-12))
        return v

    def call(self, z, x):
        h = tf.matmul(z, self.effective_recurrent_kernel()) + tf.matmul(x, self.kernel)
        if self.bias is not None:
            h = h + self.bias
        return self.activation(h)

    def compute_output_shape(self, z_shape, x_shape=None):
        return tuple(z_shape)

    def get_config(self):
        config = {
            "units": self.units,
            "activation": keras.activations.serialize(self.activation),
            "use_bias": self.use_bias,
            "normalization": self.normalization,
            "max_norm": self.max_norm,
            "power_iterations": self.power_iterations,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "recurrent_initializer": keras.initializers.serialize(self.recurrent_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            "recurrent_regularizer": keras.regularizers.serialize(self.recurrent_regularizer),
            "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
        }
        return {**super().get_config(), **config}
