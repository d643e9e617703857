"""Explicit 1-Lipschitz layers: SLL, CPL, AOL and Sandwich.

Each layer is 1-Lipschitz in the 2-norm for every weight value, and each
describes itself to `keras_implicit.lipschitz.to_lben` as one block of an
LBEN (`lben_block`): with `h` the layer's input, `z = sigma(v)` its hidden
activations and `v = W_in h + b`, the output is `R h + G z`, and the
layer's Lipschitz certificate is an IQC multiplier `lam > 0` such that, for
all `dh`, `dz` (`dv = W_in dh`),

    gamma^2 |dh|^2 - |R dh + G dz|^2 - 2 dz^T diag(lam) (dv - dz) >= 0.

| layer    | output                                   | lam                      |
|----------|------------------------------------------|--------------------------|
| SLL      | h - W^T T sigma(W h + b)                 | t = diag(T)              |
| CPL      | h - (2 / ||W||^2) W^T sigma(W h + b)     | 2 / ||W||^2              |
| AOL      | sigma(W D h + b)                         | 1                        |
| Sandwich | sqrt2 A^T Psi sigma(sqrt2 Psi^-1 B h + b) | Psi^2                   |

(SLL and CPL: expand `|dh - W^T T dz|^2` and use `W W^T <= 2 T^-1`; AOL:
`|dh|^2 - |dz|^2 - 2 dz^T (dv - dz) >= |dh|^2 - |dv|^2 >= 0`; Sandwich: with
`w = sqrt2 Psi dz` the form is `|dh - B^T w|^2` when `A A^T + B B^T = I`.)

References: Araujo, Havens, Delattre, Allauzen & Hu, "A unified algebraic
perspective on Lipschitz neural networks", ICLR 2023 (SLL); Meunier,
Delattre, Araujo & Allauzen, "A dynamical system perspective for Lipschitz
neural networks", ICML 2022 (CPL); Prach & Lampert, "Almost-orthogonal
layers for efficient general-purpose Lipschitz networks", ECCV 2022 (AOL);
Wang & Manchester, "Direct parameterization of Lipschitz-bounded deep
networks", ICML 2023 (Sandwich); Havens et al., NeurIPS 2023.
"""

import keras
import numpy as np
import tensorflow as tf

from keras_implicit.layers.precision import float32_under_half
from keras_implicit.operators import circular_conv, circular_conv_transpose
from keras_implicit import validation

def _act(activation, v):
    return tf.nn.relu(v) if activation == "relu" else v


def linear_matrix(fn, n_in, dtype):
    """The `[n_out, n_in]` matrix of a linear map `fn` on `[batch, n_in]` row vectors."""
    return tf.transpose(fn(tf.eye(n_in, dtype=dtype))).numpy().astype(np.float64)


def _block(w_in, b, g, lam, r=None, activation="relu", gamma=1.0, w_self=None):
    return {"W_in": w_in, "b": np.asarray(b, np.float64), "G": g, "lam": np.asarray(lam, np.float64),
            "R": r, "activation": activation, "gamma": float(gamma), "W_self": w_self}


class _ExplicitLayer(keras.layers.Layer):
    """Base of the explicit 1-Lipschitz layers (dense ones act on `[batch, n]`)."""

    lipschitz = 1.0

    def __init__(self, **kwargs):
        # The parameterization (SVD, Cayley inverse, scales) and the bound it
        # proves are computed in float32 under a mixed-precision policy.
        kwargs["dtype"] = float32_under_half(True, kwargs.get("dtype"))
        super().__init__(**kwargs)

    def build(self, input_shape):
        self.input_dim = int(np.prod(input_shape[1:]))  # flattened, as to_lben sees it

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def lben_block(self, input_dim):
        """This layer as an LBEN block on flattened inputs of size `input_dim` (float64 arrays)."""
        raise NotImplementedError


class _DenseExplicit(_ExplicitLayer):
    """A dense explicit layer with `units` and a `kernel_initializer`; unless
    `own_weights`, a `kernel` (`[n, units]`, `W^T`) and a `bias` (`[units]`)."""

    own_weights = False

    def __init__(self, units, kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.units = validation.integer(units, "units")
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape):
        validation.features(input_shape, type(self).__name__, "inputs")
        super().build(input_shape)
        if not self.own_weights:
            self.kernel = self.add_weight(name="kernel", shape=(input_shape[-1], self.units),
                                          initializer=self.kernel_initializer)
            self.bias = self.add_weight(name="bias", shape=(self.units,), initializer="zeros")

    def get_config(self):
        return {**super().get_config(), "units": self.units,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer)}


@keras.saving.register_keras_serializable(package="keras_implicit")
class SLLDense(_DenseExplicit):
    """SDP-based Lipschitz layer: `h <- h - W^T diag(t) relu(W h + b)`, 1-Lipschitz.

    `t_i = 2 / sum_j |(W W^T)_ij| q_j / q_i` with learned `q = exp(log_q) > 0`,
    which makes `W W^T <= 2 diag(t)^-1` (a scaled Gershgorin bound).

    Args:
        units: hidden width of `W` (`units x n`); the output has the input's width.

    Example:

    >>> import keras, keras_implicit as ki
    >>> net = keras.Sequential([keras.Input((16,)), ki.layers.SLLDense(32), ki.layers.SLLDense(32)])
    >>> net.output_shape
    (None, 16)
    """

    def build(self, input_shape):
        super().build(input_shape)
        self.log_q = self.add_weight(name="log_q", shape=(self.units,), initializer="zeros")

    def scales(self):
        """`t`, shape `[units]`."""
        k = tf.convert_to_tensor(self.kernel)
        wwt = tf.abs(tf.matmul(k, k, transpose_a=True))  # W W^T with W = kernel^T
        q = tf.exp(tf.convert_to_tensor(self.log_q))
        return 2.0 / (tf.linalg.matvec(wwt, q) / q)

    def call(self, h):
        z = tf.nn.relu(tf.matmul(h, self.kernel) + self.bias)
        return h - tf.matmul(z * self.scales(), self.kernel, transpose_b=True)

    def lben_block(self, input_dim):
        k = self.kernel.numpy().astype(np.float64)
        t = self.scales().numpy().astype(np.float64)
        return _block(k.T, self.bias.numpy(), -(k * t[None, :]), t, r=np.eye(input_dim))


@keras.saving.register_keras_serializable(package="keras_implicit")
class CPLDense(_DenseExplicit):
    """Convex potential layer: `h <- h - (2 / ||W||_2^2) W^T relu(W h + b)`, 1-Lipschitz.

    `||W||_2` is the exact largest singular value (an SVD per call: for the
    modest widths of this package; the paper uses power iteration).

    Args:
        units: hidden width of `W`.
    """

    def scale(self):
        """`2 / ||W||_2^2`."""
        return 2.0 / tf.square(tf.linalg.svd(self.kernel, compute_uv=False)[0])

    def call(self, h):
        z = tf.nn.relu(tf.matmul(h, self.kernel) + self.bias)
        return h - self.scale() * tf.matmul(z, self.kernel, transpose_b=True)

    def lben_block(self, input_dim):
        k = self.kernel.numpy().astype(np.float64)
        c = float(self.scale().numpy())
        return _block(k.T, self.bias.numpy(), -c * k, np.full(self.units, c), r=np.eye(input_dim))


@keras.saving.register_keras_serializable(package="keras_implicit")
class AOLDense(_DenseExplicit):
    """Almost-orthogonal layer: `y = sigma(W D h + b)`, `D = diag(sum_j |W^T W|_ij)^(-1/2)`.

    `||W D||_2 <= 1` for every `W`, so the layer is 1-Lipschitz with a
    monotone, 1-Lipschitz `sigma`.

    Args:
        units: output width.
        activation: "relu" (default) or "identity".
    """

    def __init__(self, units, activation="relu", kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(units, kernel_initializer=kernel_initializer, **kwargs)
        self.activation = validation.one_of(activation, "activation", ("relu", "identity"))

    def effective_kernel(self):
        """`(W D)^T` in Keras layout, `[n, units]`."""
        k = tf.convert_to_tensor(self.kernel)
        wtw = tf.abs(tf.matmul(k, k, transpose_b=True))  # W^T W with W = kernel^T
        d = tf.math.rsqrt(tf.reduce_sum(wtw, axis=1) + tf.constant(1e-30, k.dtype))
        return d[:, None] * k

    def call(self, h):
        return _act(self.activation, tf.matmul(h, self.effective_kernel()) + self.bias)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.units)

    def lben_block(self, input_dim):
        k = self.effective_kernel().numpy().astype(np.float64)
        return _block(k.T, self.bias.numpy(), np.eye(self.units), np.ones(self.units),
                      activation=self.activation)

    def get_config(self):
        return {**super().get_config(), "activation": self.activation}


def cayley(x, y):
    """`[(I + Z)^-1 (I - Z); -2 Y (I + Z)^-1]` with `Z = X - X^T + Y^T Y`: orthonormal columns.

    `x`: `[p, p]`, `y`: `[q, p]`; returns `[p + q, p]` with `Q^T Q = I`.
    """
    p = x.shape[0]
    eye = tf.eye(p, dtype=x.dtype)
    z = x - tf.transpose(x) + tf.matmul(y, y, transpose_a=True)
    inv = tf.linalg.inv(eye + z)
    return tf.concat([tf.matmul(inv, eye - z), -2.0 * tf.matmul(y, inv)], axis=0)


@keras.saving.register_keras_serializable(package="keras_implicit")
class SandwichDense(_DenseExplicit):
    """Sandwich layer: `y = sqrt2 A^T Psi relu(sqrt2 Psi^-1 B h + b)`, 1-Lipschitz.

    `[A^T; B^T] = cayley(X, Y)` has orthonormal columns, so
    `A A^T + B B^T = I`, and `Psi = diag(exp psi)` is free.

    Args:
        units: hidden width `p` (at most input width + output width).
        output_units: output width, default: the input's width.
    """

    own_weights = True

    def __init__(self, units, output_units=None, kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(units, kernel_initializer, **kwargs)
        self.output_units = None if output_units is None else validation.integer(output_units, "output_units")

    def build(self, input_shape):
        super().build(input_shape)
        n = int(input_shape[-1])
        self.out_dim = self.output_units or n
        q = self.out_dim + n - self.units
        if q < 0:
            raise ValueError(
                f"SandwichDense needs units <= input width + output width = {n + self.out_dim}. "
                f"Received: units={self.units}"
            )
        p = self.units
        self.x = self.add_weight(name="x", shape=(p, p), initializer=self.kernel_initializer)
        self.y = self.add_weight(name="y", shape=(q, p), initializer=self.kernel_initializer)
        self.psi = self.add_weight(name="psi", shape=(p,), initializer="zeros")
        self.bias = self.add_weight(name="bias", shape=(p,), initializer="zeros")

    def factors(self):
        """`(A^T, B^T)`: `[out, p]` and `[n, p]`."""
        q = cayley(tf.convert_to_tensor(self.x), tf.convert_to_tensor(self.y))
        return q[: self.out_dim], q[self.out_dim:]

    def call(self, h):
        at, bt = self.factors()
        psi = tf.exp(tf.convert_to_tensor(self.psi))
        root2 = tf.constant(np.sqrt(2.0), h.dtype)
        z = tf.nn.relu(root2 * tf.matmul(h, bt) / psi + self.bias)
        return root2 * tf.matmul(z * psi, at, transpose_b=True)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.output_units or input_shape[-1])

    def lben_block(self, input_dim):
        at, bt = (t.numpy().astype(np.float64) for t in self.factors())
        psi = np.exp(self.psi.numpy().astype(np.float64))
        root2 = np.sqrt(2.0)
        return _block(root2 * bt.T / psi[:, None], self.bias.numpy(), root2 * at * psi[None, :], psi**2)

    def get_config(self):
        return {**super().get_config(), "output_units": self.output_units}


@keras.saving.register_keras_serializable(package="keras_implicit")
class SLLConv2D(_ExplicitLayer):
    """Convolutional SLL: `h <- h - K^T (t * relu(K h + b))` with circular convolutions.

    `K` is a `kernel_size x kernel_size` convolution from the image's `C`
    channels to `filters` channels applied with wrap-around, `K^T` its
    adjoint, and `t_i = 2 / sum_{j, d} |kk_ij(d)| q_j / q_i` with
    `kk_ij(d)` the cross-correlation of the filters `i` and `j` (which bounds
    the rows of `K K^T`), so the layer is 1-Lipschitz on images.

    Args:
        filters: hidden channels.
        kernel_size: odd int, default 3.
    """

    def __init__(self, filters, kernel_size=3, kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.filters = validation.integer(filters, "filters")
        self.kernel_size = validation.integer(kernel_size, "kernel_size", odd=True)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape):
        validation.image(input_shape, "SLLConv2D", "inputs")
        super().build(input_shape)
        k = self.kernel_size
        self.image_shape = tuple(int(d) for d in input_shape[1:])
        self.kernel = self.add_weight(name="kernel", shape=(k, k, input_shape[-1], self.filters),
                                      initializer=self.kernel_initializer)
        self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros")
        self.log_q = self.add_weight(name="log_q", shape=(self.filters,), initializer="zeros")

    def scales(self):
        """`t`, shape `[filters]`."""
        k = tf.convert_to_tensor(self.kernel)
        s = self.kernel_size
        images = tf.pad(tf.transpose(k, [3, 0, 1, 2]), [[0, 0], [s - 1, s - 1], [s - 1, s - 1], [0, 0]])
        kk = tf.abs(tf.nn.conv2d(images, k, 1, "VALID"))  # [filters_i, 2s-1, 2s-1, filters_j]
        q = tf.exp(tf.convert_to_tensor(self.log_q))
        rows = tf.reduce_sum(kk * q[None, None, None, :], axis=[1, 2, 3]) / q
        return 2.0 / rows

    def call(self, h):
        z = tf.nn.relu(circular_conv(h, self.kernel) + self.bias)
        return h - circular_conv_transpose(z * self.scales(), self.kernel)

    def lben_block(self, input_dim):
        hh, ww, c = self.image_shape
        if input_dim != hh * ww * c:
            raise ValueError(
                f"SLLConv2D built for images {self.image_shape} has {hh * ww * c} inputs. "
                f"Received: input_dim={input_dim}"
            )
        dtype = self.kernel.dtype
        n_hidden = hh * ww * self.filters

        def conv(flat):
            return tf.reshape(circular_conv(tf.reshape(flat, [-1, hh, ww, c]), self.kernel), [-1, n_hidden])

        def conv_t(flat):
            z = tf.reshape(flat, [-1, hh, ww, self.filters])
            return tf.reshape(circular_conv_transpose(z, self.kernel), [-1, input_dim])

        t = np.tile(self.scales().numpy().astype(np.float64), hh * ww)
        b = np.tile(self.bias.numpy().astype(np.float64), hh * ww)
        k_mat = linear_matrix(conv, input_dim, dtype)
        kt_mat = linear_matrix(conv_t, n_hidden, dtype)
        return _block(k_mat, b, -kt_mat * t[None, :], t, r=np.eye(input_dim))

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer)}


__all__ = ["AOLDense", "CPLDense", "SLLConv2D", "SLLDense", "SandwichDense", "cayley", "linear_matrix"]
