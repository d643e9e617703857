"""Lipschitz-bounded equilibrium networks (LBEN; Revay, Wang & Manchester 2020).

The model is `z = sigma(W z + U x + b_z)`, `y = W_o z + b_y` with `sigma`
monotone and slope-restricted in `[0, 1]` (ReLU). With `Psi = diag(exp psi)`
(the inverse of the IQC multiplier `Lambda`) and free `V`, `S`, `U`, `W_o`,
`psi`, the direct parameterization

    W = I - Psi ( W_o^T W_o / (2 gamma) + Psi^-1 U U^T Psi^-1 / (2 gamma)
                  + V^T V + m I + S^T - S )

gives, for every parameter value,

    2 Lambda - Lambda W - W^T Lambda - (W_o^T W_o + Lambda U U^T Lambda) / gamma
        = 2 (V^T V + m I)  >= 0,

the Schur complement of the LBEN LMI, so `x -> y` is `gamma`-Lipschitz in
the 2-norm and (for `m > 0`) the equilibrium is unique. Without the two
Lipschitz terms and with `Psi = I` this is exactly monDEQ's
`W = (1 - m) I - A^T A + B - B^T` with `A = V`, `B = S`.

`Lambda (I - W)` is strongly monotone, so the equilibrium is the zero of a
monotone operator in the `Lambda`-weighted inner product. The prox of a
separable activation in a diagonal metric is the activation itself, and the
splitting iterations do not depend on the metric, so Peaceman-Rachford and
forward-backward apply unchanged (Theorem 3's backward too, in the
`Psi`-weighted metric).
"""

import keras
import numpy as np
import tensorflow as tf

from keras_implicit import prox as prox_lib
from keras_implicit import validation
from keras_implicit.layers.operator_cell import (
    LINEAR_INIT,
    ImageState,
    OperatorCell,
    OperatorFamily,
)
from keras_implicit.operators import (
    DenseOperator,
    FourierOperator,
    FunctionOperator,
    LowRankUpdateResolvent,
    scalar,
    circular_conv,
    circular_conv_transpose,
    kernel_spectrum,
    to_complex,
)

METRICS = ("diagonal", "identity")
CONV_METRICS = ("channel", "image", "full", "identity")


def check_activation(activation):
    """A monotone activation with slopes in [0, 1], as a prox (LBEN's condition)."""
    try:
        return prox_lib.get(activation)
    except ValueError:
        raise ValueError(
            "LBEN needs a monotone activation with slopes in [0, 1] (one of "
            "'relu', 'leaky_relu', 'soft_threshold', 'identity', 'tanh', 'sigmoid'). "
            f"Received: activation={activation!r}"
        ) from None


def _set_bound_settings(cell, m, output_units, lipschitz, metric, metrics):
    """The settings every LBEN cell validates: `m`, `output_units`, `lipschitz`, `metric`."""
    cell.m = validation.number(m, "m", low_open=False)
    cell.output_units = validation.integer(output_units, "output_units")
    cell.lipschitz = validation.number(lipschitz, "lipschitz")
    cell.metric = validation.one_of(metric, "metric", metrics)


def lben_weight(v, s, psi=None, u=None, w_o=None, lipschitz=1.0, m=1.0):
    """The LBEN matrix `W` from its free parameters (column-vector convention).

    Args:
        v, s: `[n, n]`.
        psi: `[n]` log-metric (`Psi = diag(exp psi)`), or None for `Psi = I`.
        u: `[n, d]` input matrix `U`, or None to drop its Lipschitz term.
        w_o: `[p, n]` output matrix `W_o`, or None to drop its Lipschitz term.
        lipschitz: `gamma`.
        m: monotonicity margin.

    Returns:
        `W = I - Psi (W_o^T W_o / 2g + Psi^-1 U U^T Psi^-1 / 2g + V^T V + m I + S^T - S)`.
    """
    v = tf.convert_to_tensor(v)
    n = v.shape[0]
    eye = tf.eye(n, dtype=v.dtype)
    h = tf.matmul(v, v, transpose_a=True) + m * eye + tf.transpose(s) - s
    psi_vec = tf.ones([n], v.dtype) if psi is None else tf.exp(tf.convert_to_tensor(psi, v.dtype))
    if w_o is not None:
        h = h + tf.matmul(w_o, w_o, transpose_a=True) / (2.0 * lipschitz)
    if u is not None:
        pu = u / psi_vec[:, None]
        h = h + tf.matmul(pu, pu, transpose_b=True) / (2.0 * lipschitz)
    return eye - psi_vec[:, None] * h


@keras.saving.register_keras_serializable(package="keras_implicit")
class LipschitzCell(OperatorCell):
    """The LBEN cell `f(z, x) = sigma(W z + U x + b)` with `W` from `lben_weight`.

    It also owns the output map `y = W_o z + b_y` (`output_kernel` =
    `W_o^T`, `output_bias`), since the bound is from input to output.

    Args:
        units: hidden width `n`.
        output_units: output width `p`.
        lipschitz: `gamma > 0`.
        m: `>= 0`, default 1.0. `m = 0` keeps the bound but guarantees a
            unique equilibrium only for structures that are feed-forward (as
            `keras_implicit.lipschitz.to_lben` builds).
        metric: "diagonal" (learned `psi`) or "identity" (`Psi = I`).
        activation: monotone, slopes in [0, 1]; default "relu".
        identity_units: the first `identity_units` units use the identity
            instead of `activation` (slope 1, so the bound holds); used by
            exact reparameterizations whose first block copies the input.
    """

    def __init__(self, units, output_units, lipschitz=1.0, m=1.0, metric="diagonal", activation="relu",
                 identity_units=0, kernel_initializer=LINEAR_INIT, bias_initializer="zeros", **kwargs):
        activation = check_activation(activation)
        super().__init__(units, activation=activation, kernel_initializer=kernel_initializer,
                         bias_initializer=bias_initializer, **kwargs)
        _set_bound_settings(self, m, output_units, lipschitz, metric, METRICS)
        self.identity_units = validation.integer(identity_units, "identity_units", 0, units)

    def build(self, z_shape, x_shape=None):
        validation.features(x_shape, "LipschitzCell")
        n, p = self.units, self.output_units
        init = self.kernel_initializer
        self.V = self.add_weight(name="V", shape=(n, n), initializer=init)
        self.S = self.add_weight(name="S", shape=(n, n), initializer=init)
        self.kernel = self.add_weight(name="kernel", shape=(x_shape[-1], n), initializer=init)
        self.bias = self.add_weight(name="bias", shape=(n,), initializer=self.bias_initializer)
        self.output_kernel = self.add_weight(name="output_kernel", shape=(n, p), initializer=init)
        self.output_bias = self.add_weight(name="output_bias", shape=(p,), initializer="zeros")
        self.psi = None
        if self.metric == "diagonal":
            self.psi = self.add_weight(name="psi", shape=(n,), initializer="zeros")
        mask = np.ones(n, np.float32)
        mask[: self.identity_units] = 0.0
        self._act_mask = mask  # 1 where the activation applies

    def metric_diagonal(self):
        """`Psi`'s diagonal, `exp(psi)` (ones for the identity metric)."""
        if self.psi is None:
            return tf.ones([self.units], self.compute_dtype)
        return tf.exp(tf.convert_to_tensor(self.psi))

    def implicit_weight(self):
        return lben_weight(
            self.V, self.S, None if self.psi is None else self.psi,
            u=tf.transpose(self.kernel), w_o=tf.transpose(self.output_kernel),
            lipschitz=self.lipschitz, m=self.m,
        )

    def operator(self):
        return DenseOperator(self.implicit_weight())

    def output(self, z):
        return tf.matmul(z, self.output_kernel) + self.output_bias

    def prox(self, v, alpha):
        out = self.activation.prox(v, alpha)
        if self.identity_units:
            mask = tf.constant(self._act_mask, v.dtype)
            out = mask * out + (1.0 - mask) * v
        return out

    def derivative(self, z):
        d = self.activation.derivative(z)
        if self.identity_units:
            mask = tf.constant(self._act_mask, z.dtype)
            d = mask * d + (1.0 - mask)
        return d

    def get_config(self):
        config = super().get_config()
        config.update({
            "m": self.m,
            "output_units": self.output_units,
            "lipschitz": self.lipschitz,
            "metric": self.metric,
            "identity_units": self.identity_units,
        })
        return config


class _LipschitzLayer(OperatorFamily):
    """What the LBEN layers share: the output map, the bound, the FB step."""

    @property
    def lipschitz(self):
        return self.cell.lipschitz

    def forward_backward_bound(self):
        """Largest provably convergent forward-backward step in the `Lambda` metric.

        With `T = Lambda^(1/2) (I - W) Lambda^(-1/2)`, `2 lambda_min(sym T) / ||T||_2^2`
        (forms the dense `W`: small layers only).
        """
        w = self.cell.implicit_weight()
        psi = tf.reshape(self.cell.metric_diagonal(), [-1])
        scale = 1.0 / tf.sqrt(psi)  # Lambda^(1/2) = Psi^(-1/2)
        t = scale[:, None] * (tf.eye(w.shape[0], dtype=w.dtype) - w) / scale[None, :]
        mu = tf.reduce_min(tf.linalg.eigvalsh(0.5 * (t + tf.transpose(t))))
        norm = tf.linalg.svd(t, compute_uv=False)[0]
        return float(2.0 * mu / norm**2)

    def readout(self, z):
        return self.cell.output(z)

    def readout_shape(self, state_shape, input_shape):
        return (self.cell.output_units,)


@keras.saving.register_keras_serializable(package="keras_implicit")
class LipschitzDense(_LipschitzLayer):
    """A dense LBEN layer: `y = W_o z* + b_y`, `z* = sigma(W z* + U x + b)`, `gamma`-Lipschitz.

    The map from the layer's input to its output is `lipschitz`-Lipschitz
    in the 2-norm for every value of the weights (see the module docstring
    for the parameterization), so a classifier built as
    `Input -> LipschitzDense(width, n_classes)` has certified robustness
    radii `margin / (sqrt(2) gamma)` (`keras_implicit.robustness`).

    Args:
        units: hidden width.
        output_units: output width (e.g. the number of classes).
        lipschitz: `gamma > 0`, default 1.0.
        m: `>= 0`, default 1.0 (see `LipschitzCell`).
        metric: "diagonal" (default, learned `Psi`) or "identity".
        activation: default "relu"; must be monotone with slopes in [0, 1].
        solver: default "peaceman_rachford" (any splitting or generic solver).
        alpha: splitting step, default 1.0.
        backward, tol, max_iter, stop_mode, return_info, on_failure,
            track_metrics: as `MonotoneDense`.
        identity_units: see `LipschitzCell`.
        structure_mask: optional `[units, units]` 0/1 array; with
            `structure_penalty > 0` the layer adds
            `structure_penalty * sum(|W| * (1 - structure_mask))` to the
            model's losses (an L1 penalty on the entries of `W` outside the
            structure, to fine-tune a reparameterized explicit network
            without losing its structure).
        structure_penalty: float >= 0, default 0.

    Weights: `V`, `S`, `kernel` (`U^T`), `bias`, `output_kernel` (`W_o^T`),
    `output_bias`, `psi` (diagonal metric).

    Example:

    >>> import keras, keras_implicit as ki
    >>> inputs = keras.Input((64,))
    >>> logits = ki.layers.LipschitzDense(80, 10, lipschitz=1.0)(inputs)
    >>> keras.Model(inputs, logits).output_shape
    (None, 10)

    Reference: Revay, Wang & Manchester, "Lipschitz bounded equilibrium
    networks", arXiv 2010.01732.
    """

    cell_class = LipschitzCell
    cell_name = "lipschitz_cell"

    def __init__(self, units, output_units, lipschitz=1.0, m=1.0, metric="diagonal", activation="relu",
                 identity_units=0, structure_mask=None, structure_penalty=0.0,
                 kernel_initializer=LINEAR_INIT, bias_initializer="zeros", solver="peaceman_rachford",
                 alpha=1.0, tol=1e-4, max_iter=100, stop_mode="rel", **kwargs):
        super().__init__(dict(units=units, output_units=output_units, lipschitz=lipschitz, m=m, metric=metric,
                              activation=check_activation(activation), identity_units=identity_units,
                              kernel_initializer=kernel_initializer, bias_initializer=bias_initializer),
                         solver, alpha, tol=tol, max_iter=max_iter, stop_mode=stop_mode, **kwargs)
        self.structure_penalty = validation.number(structure_penalty, "structure_penalty", low_open=False)
        self.structure_mask = None
        if structure_mask is not None:
            mask = np.asarray(structure_mask, dtype=np.float64)
            if mask.shape != (units, units):
                raise ValueError(
                    f"`structure_mask` must have shape (units, units) = ({units}, {units}). "
                    f"Received: structure_mask.shape={mask.shape}"
                )
            self.structure_mask = mask

    def structure_loss(self):
        """`sum |W_ij|` over the entries outside `structure_mask` (0 without a mask)."""
        w = self.cell.implicit_weight()
        if self.structure_mask is None:
            return tf.zeros([], w.dtype)
        outside = tf.constant(1.0 - self.structure_mask, w.dtype)
        return tf.reduce_sum(tf.abs(w) * outside)

    def call(self, inputs, initial_state=None):
        if self.structure_mask is not None and self.structure_penalty > 0:
            self.add_loss(self.structure_penalty * self.structure_loss())
        return super().call(inputs, initial_state)

    def get_config(self):
        return {
            **super().get_config(),
            "structure_mask": None if self.structure_mask is None else self.structure_mask.tolist(),
            "structure_penalty": self.structure_penalty,
        }


@keras.saving.register_keras_serializable(package="keras_implicit")
class LipschitzConvCell(ImageState, OperatorCell):
    """The convolutional LBEN cell on `[H, W, C]` states (see `LipschitzConv2D`)."""

    def __init__(self, filters, output_units, lipschitz=1.0, kernel_size=3, m=1.0, metric="channel", pool=2,
                 activation="relu", kernel_initializer=LINEAR_INIT, bias_initializer="zeros", **kwargs):
        activation = check_activation(activation)
        super().__init__(filters, activation=activation, kernel_initializer=kernel_initializer,
                         bias_initializer=bias_initializer, **kwargs)
        _set_bound_settings(self, m, output_units, lipschitz, metric, CONV_METRICS)
        self.filters = filters
        self.kernel_size = validation.integer(kernel_size, "kernel_size", odd=True)
        self.pool = validation.integer(pool, "pool")
        self.state_size = None  # known from the input's shape

    def compute_state_shape(self, x_shape):
        validation.image(x_shape, "LipschitzConv2D")
        if x_shape[1] % self.pool or x_shape[2] % self.pool:
            raise ValueError(
                f"The image height and width must be multiples of `pool`={self.pool}. "
                f"Received: x.shape={tuple(x_shape)}"
            )
        return (x_shape[1], x_shape[2], self.filters)

    def build(self, z_shape, x_shape=None):
        h, w, c = self.compute_state_shape(x_shape)
        self.spatial = (h, w)
        k = self.kernel_size
        init = self.kernel_initializer
        self.V = self.add_weight(name="V", shape=(k, k, c, c), initializer=init)
        self.S = self.add_weight(name="S", shape=(k, k, c, c), initializer=init)
        self.kernel = self.add_weight(name="kernel", shape=(k, k, x_shape[-1], c), initializer=init)
        self.bias = self.add_weight(name="bias", shape=(c,), initializer=self.bias_initializer)
        pooled = (h // self.pool) * (w // self.pool) * c
        self.output_kernel = self.add_weight(name="output_kernel", shape=(pooled, self.output_units),
                                             initializer=init)
        self.output_bias = self.add_weight(name="output_bias", shape=(self.output_units,), initializer="zeros")
        shapes = {"channel": (1, 1, c), "image": (h, w, 1), "full": (h, w, c)}
        self.psi = None
        if self.metric in shapes:
            self.psi = self.add_weight(name="psi", shape=shapes[self.metric], initializer="zeros")

    def metric_diagonal(self):
        """`Psi` as an `[H, W, C]` field (ones for the identity metric)."""
        h, w = self.spatial
        ones = tf.ones([h, w, self.filters], self.compute_dtype)
        if self.psi is None:
            return ones
        return ones * tf.exp(tf.convert_to_tensor(self.psi))

    def _pool(self, z):
        p = self.pool
        pooled = tf.nn.avg_pool2d(z, p, p, "VALID") if p > 1 else z
        return tf.reshape(pooled, [tf.shape(z)[0], -1])

    def _pool_transpose(self, g):
        h, w = self.spatial
        p = self.pool
        g = tf.reshape(g, [-1, h // p, w // p, self.filters])
        if p > 1:
            g = tf.repeat(tf.repeat(g, p, axis=1), p, axis=2) / float(p * p)
        return g

    def _image_operator(self, transpose):
        """`W` (or `W^T`) on `[batch, H, W, C]` images, matrix-free."""
        v, s, u = (tf.convert_to_tensor(t) for t in (self.V, self.S, self.kernel))
        ko = tf.convert_to_tensor(self.output_kernel)
        psi = self.metric_diagonal()
        half_g = 0.5 / self.lipschitz

        def h_apply(z, skew_sign):
            # (W_o^T W_o / 2g + V^T V + m I +- (S^T - S)) z
            out = half_g * self._pool_transpose(tf.matmul(tf.matmul(self._pool(z), ko), ko, transpose_b=True))
            out += circular_conv_transpose(circular_conv(z, v), v) + self.m * z
            return out + skew_sign * (circular_conv_transpose(z, s) - circular_conv(z, s))

        def uut(z):
            return circular_conv(circular_conv_transpose(z, u), u)

        if not transpose:
            return lambda z: z - psi * h_apply(z, 1.0) - half_g * uut(z / psi)
        return lambda g: g - h_apply(psi * g, -1.0) - half_g * uut(g) / psi

    def _fourier_resolvent(self, alpha):
        """`(I + alpha (I - W))^-1` without an `n x n` matrix (metric "channel" or "identity").

        Write `I - W = M + Psi L` with `M = Psi G + U U^T Psi^-1 / 2g`,
        `G = V^T V + m I + S^T - S` and `L = P^T W_o^T W_o P / 2g` (`P` the
        average pooling). With `Psi` the same at every pixel, `M` is a
        circular operator: the 2-D FFT turns `I + alpha M` into one `C x C`
        block per frequency (`Psi_c G(w) + U(w) U(w)^H Psi_c^-1 / 2g`),
        inverted once. `L` is not shift-invariant, but of rank
        `<= output_units`: Woodbury adds it with an `output_units`-square
        capacitance matrix (`operators.LowRankUpdateResolvent`).
        """
        v_hat, s_hat, u_hat = (kernel_spectrum(tf.convert_to_tensor(t), self.spatial)
                               for t in (self.V, self.S, self.kernel))
        eye = tf.eye(self.filters, dtype=v_hat.dtype)
        g = tf.matmul(v_hat, v_hat, adjoint_a=True) + scalar(self.m, v_hat.dtype) * eye
        g += tf.linalg.adjoint(s_hat) - s_hat
        q = tf.matmul(u_hat, u_hat, adjoint_b=True)
        psi_field = self.metric_diagonal()
        psi_c = to_complex(psi_field[0, 0])  # the same at every pixel
        half_g = 0.5 / self.lipschitz
        m_hat = psi_c[:, None] * g + scalar(half_g, v_hat.dtype) * q / psi_c[None, :]
        base = FourierOperator(eye - m_hat, self.spatial, self.compute_dtype)
        # Psi L = left right^T; right's rows are the columns of P^T W_o^T
        right = self._flat(self._pool_transpose(tf.transpose(tf.convert_to_tensor(self.output_kernel))))
        left = right * self._flat(psi_field[None]) * half_g
        return LowRankUpdateResolvent(base.resolvent(alpha), left, right, alpha)

    def operator(self):
        forward, backward = self._image_operator(False), self._image_operator(True)
        h, w = self.spatial
        n = h * w * self.filters
        # a metric the same at every pixel: the FFT resolvent; otherwise dense
        structured = self.metric in ("channel", "identity")
        return FunctionOperator(
            lambda z: self._flat(forward(self._unflat(z, None))),
            lambda z: self._flat(backward(self._unflat(z, None))),
            n, self.compute_dtype,
            resolvent=self._fourier_resolvent if structured else None,
        )

    def input_injection(self, x):
        return circular_conv(x, self.kernel) + self.bias

    def output(self, z):
        return tf.matmul(self._pool(z), self.output_kernel) + self.output_bias

    def get_config(self):
        config = super().get_config()
        config.pop("units")
        config.update({"filters": self.filters, "m": self.m, "output_units": self.output_units,
                       "lipschitz": self.lipschitz,
                       "kernel_size": self.kernel_size, "metric": self.metric, "pool": self.pool})
        return config


@keras.saving.register_keras_serializable(package="keras_implicit")
class LipschitzConv2D(_LipschitzLayer):
    """A convolutional LBEN layer from images to `output_units` outputs, `gamma`-Lipschitz.

    `V`, `S` and `U` are 2-D convolutions applied with wrap-around
    (circulant operators, whose adjoints are convolutions too), `W_o` is a
    dense map after `pool x pool` average pooling, and `Psi` is shared per
    channel (`metric="channel"`), per pixel (`"image"`), per entry
    (`"full"`) or the identity, as in the authors' code. `W` follows the
    parameterization of `LipschitzDense` with these operators, so the map
    from image to output is `lipschitz`-Lipschitz for every weight value.

    The products with `W` are matrix-free. Peaceman-Rachford (the default)
    needs the resolvent `(I + alpha (I - W))^-1`, computed once per call:
    with `metric="channel"` or `"identity"` (the same metric at every pixel)
    by the 2-D FFT, one `filters x filters` block per frequency, plus a
    Woodbury correction of rank `output_units` for the pooled output term
    (`LipschitzConvCell._fourier_resolvent`), so no `n x n` matrix is
    formed (`n = H W filters`; 32 x 32 x 32 images train). With `"image"`
    or `"full"` the resolvent is a dense `n x n` inverse, which suits small
    images such as 8x8 digits only; there use `solver="forward_backward"`
    (matrix-free) with a step `alpha <= layer.forward_backward_bound()`
    (that bound forms the dense `W` once: compute it on a small image).

    Args:
        filters: channels of the state.
        output_units: output width.
        lipschitz: `gamma > 0`, default 1.0.
        kernel_size: odd int, default 3.
        m: `>= 0`, default 1.0.
        metric: "channel" (default), "image", "full" or "identity".
        pool: average-pooling factor before the output map, default 2
            (the image sides must be multiples of it).
        activation, solver, alpha, backward, tol, max_iter, stop_mode,
            return_info, on_failure, track_metrics: as `LipschitzDense`.

    Call arguments:
        inputs: images `[batch, H, W, C_in]`.

    Returns:
        `[batch, output_units]`.
    """

    cell_class = LipschitzConvCell
    cell_name = "lipschitz_conv_cell"

    def __init__(self, filters, output_units, lipschitz=1.0, kernel_size=3, m=1.0, metric="channel", pool=2,
                 activation="relu", kernel_initializer=LINEAR_INIT, bias_initializer="zeros",
                 solver="peaceman_rachford", alpha=1.0, tol=1e-4, max_iter=100, stop_mode="rel", **kwargs):
        super().__init__(dict(filters=filters, output_units=output_units, lipschitz=lipschitz,
                              kernel_size=kernel_size, m=m, metric=metric, pool=pool,
                              activation=check_activation(activation), kernel_initializer=kernel_initializer,
                              bias_initializer=bias_initializer),
                         solver, alpha, tol=tol, max_iter=max_iter, stop_mode=stop_mode, **kwargs)


__all__ = ["LipschitzCell", "LipschitzConv2D", "LipschitzConvCell", "LipschitzDense", "lben_weight"]
