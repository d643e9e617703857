"""Monotone operator equilibrium networks (monDEQ; Winston & Kolter, NeurIPS 2020)."""


import keras
import numpy as np
import tensorflow as tf

from keras_implicit.layers.operator_cell import (
    LINEAR_INIT,
    ImageState,
    OperatorCell,
    OperatorFamily,
)
from keras_implicit.operators import (
    DenseOperator,
    FourierOperator,
    MultiTierOperator,
    kernel_spectrum,
    to_complex,
)
from keras_implicit import validation

@keras.saving.register_keras_serializable(package="keras_implicit")
class MonotoneCell(OperatorCell):
    """The monDEQ cell `f(z, x) = sigma(W z + U x + b)` with a monotone `W`.

    `W = (1 - m) I - A^T A + B - B^T`, so `I - W = m I + A^T A + (B^T - B)` has
    symmetric part `m I + A^T A >= m I` for every `A, B` (Winston & Kolter,
    Theorem 1): the equilibrium exists and is unique for every input. With
    `weight_normalization=True`, `A^T A` becomes `g A^T A / ||A||_F^2` and `B`
    becomes `h B / ||B||_F` with learned scalars `g`, `h`.

    Besides `call`, the cell gives the operator-splitting solvers their
    structure (`splitting`) and the adjoint its transposed problem
    (`adjoint_splitting`, Theorem 3).

    Args:
        units: int, width of the hidden state.
        m: float > 0, monotonicity parameter, default 1.0.
        activation: a proximal activation (see `keras_implicit.prox`), default "relu".
        weight_normalization: bool, default False.
        kernel_initializer: for `A`, `B` and `U`, default torch.nn.Linear's.
        bias_initializer: default "zeros".
    """

    def __init__(self, units, m=1.0, activation="relu", weight_normalization=False,
                 kernel_initializer=LINEAR_INIT, bias_initializer="zeros", **kwargs):
        super().__init__(units, activation, kernel_initializer, bias_initializer, **kwargs)
        self.m = validation.number(m, "m")
        self.weight_normalization = bool(weight_normalization)

    def build(self, z_shape, x_shape=None):
        validation.features(x_shape, "MonotoneCell")
        n = self.units
        self.A = self.add_weight(name="A", shape=(n, n), initializer=self.kernel_initializer)
        self.B = self.add_weight(name="B", shape=(n, n), initializer=self.kernel_initializer)
        self.kernel = self.add_weight(name="kernel", shape=(x_shape[-1], n), initializer=self.kernel_initializer)
        self.bias = self.add_weight(name="bias", shape=(n,), initializer=self.bias_initializer)
        self._add_scales()

    def _add_scales(self):
        if self.weight_normalization:
            self.g = self.add_weight(name="g", shape=(), initializer="ones")
            self.h = self.add_weight(name="h", shape=(), initializer="ones")

    def implicit_weight(self):
        """The matrix `W = (1 - m) I - A^T A + B - B^T`."""
        a = tf.convert_to_tensor(self.A)
        b = tf.convert_to_tensor(self.B)
        ata = tf.matmul(a, a, transpose_a=True)
        if self.weight_normalization:
            ata = self.g * ata / tf.reduce_sum(tf.square(a))
            b = self.h * b / tf.norm(b)
        eye = tf.eye(self.units, dtype=a.dtype)
        return (1.0 - self.m) * eye - ata + b - tf.transpose(b)

    def operator(self):
        return DenseOperator(self.implicit_weight())

    def get_config(self):
        return {**super().get_config(), "m": self.m, "weight_normalization": self.weight_normalization}


def _odd(k):
    return k >= 1 and k % 2 == 1


def _nonnegative(p):
    return p >= 0


def _inject(x, kernel, bias, padding):
    """`U x + b`: a "SAME" convolution of the input, zero-padded to the state's grid."""
    ph, pw = padding
    if ph or pw:
        x = tf.pad(x, [[0, 0], [ph, ph], [pw, pw], [0, 0]])
    return tf.nn.conv2d(x, kernel, 1, "SAME") + bias


class _BorderMasked:
    """The activation's prox with a border held at zero (`self.border_mask`).

    Still a proximal operator (of f plus the indicator of "border = 0"), whose
    derivative is zero on the border.
    """

    def _set_border_mask(self, *tiers):
        """Ones inside the border of each `(h, w, c, (border_h, border_w))`
        tier: one `[h, w, c]` grid, or the tiers flat and concatenated."""
        masks = []
        for h, w, c, (bh, bw) in tiers:
            mask = np.zeros((h, w, c), "float32")
            mask[bh:h - bh, bw:w - bw] = 1.0
            masks.append(mask)
        mask = masks[0] if len(masks) == 1 else np.concatenate([m.reshape(-1) for m in masks])
        self.border_mask = tf.constant(mask, dtype=self.compute_dtype)

    def prox(self, v, alpha):
        return self.activation.prox(v, alpha) * self.border_mask

    def derivative(self, z):
        return self.activation.derivative(z) * self.border_mask


@keras.saving.register_keras_serializable(package="keras_implicit")
class MonotoneConvCell(_BorderMasked, ImageState, MonotoneCell):
    """The convolutional monDEQ cell (see `MonotoneConv2D`) on `[H, W, C]` states.

    Its state shape follows its input: `compute_state_shape(x_shape)` gives
    `(H + 2 padding, W + 2 padding, filters)`.
    """

    def __init__(self, filters, kernel_size=3, m=1.0, activation="relu", padding=1,
                 weight_normalization=True, kernel_initializer=LINEAR_INIT,
                 bias_initializer="zeros", **kwargs):
        super().__init__(filters, m=m, activation=activation, weight_normalization=weight_normalization,
                         kernel_initializer=kernel_initializer, bias_initializer=bias_initializer, **kwargs)
        self.filters = filters
        self.kernel_size = validation.int_pair(kernel_size, "kernel_size", _odd, "an odd int or a pair of them")
        self.padding = validation.int_pair(padding, "padding", _nonnegative, "an int >= 0 or a pair of them")
        self.state_size = None  # known from the input's shape

    def compute_state_shape(self, x_shape):
        validation.image(x_shape, "MonotoneConv2D")
        ph, pw = self.padding
        return (x_shape[1] + 2 * ph, x_shape[2] + 2 * pw, self.filters)

    def build(self, z_shape, x_shape=None):
        h, w, c = self.compute_state_shape(x_shape)
        self.spatial = (h, w)
        kh, kw = self.kernel_size
        init = self.kernel_initializer
        self.A = self.add_weight(name="A", shape=(kh, kw, c, c), initializer=init)
        self.B = self.add_weight(name="B", shape=(kh, kw, c, c), initializer=init)
        self.kernel = self.add_weight(name="kernel", shape=(kh, kw, x_shape[-1], c), initializer=init)
        self.bias = self.add_weight(name="bias", shape=(c,), initializer=self.bias_initializer)
        self._add_scales()
        self._set_border_mask((h, w, 1, self.padding))

    def operator(self):
        a = tf.convert_to_tensor(self.A)
        b = tf.convert_to_tensor(self.B)
        a_hat = kernel_spectrum(a, self.spatial)
        b_hat = kernel_spectrum(b, self.spatial)
        ata = tf.matmul(a_hat, a_hat, adjoint_a=True)
        skew = b_hat - tf.linalg.adjoint(b_hat)
        if self.weight_normalization:
            ata = to_complex(self.g / tf.reduce_sum(tf.square(a))) * ata
            skew = to_complex(self.h / tf.norm(b)) * skew
        eye = tf.eye(self.filters, dtype=ata.dtype)
        w_hat = tf.constant(1.0 - self.m, ata.dtype) * eye - ata + skew
        return FourierOperator(w_hat, self.spatial, a.dtype)

    def input_injection(self, x):
        return _inject(x, self.kernel, self.bias, self.padding)


    def compute_output_shape(self, z_shape, x_shape=None):
        return tuple(z_shape)

    def get_config(self):
        config = super().get_config()
        config.pop("units")
        config.update({"filters": self.filters, "kernel_size": self.kernel_size, "padding": self.padding})
        return config


@keras.saving.register_keras_serializable(package="keras_implicit")
class MonotoneMultiscaleCell(_BorderMasked, MonotoneCell):
    """The multi-tier monDEQ cell (see `MonotoneMultiscale`); its state is flat `[batch, n]`."""

    def __init__(self, filters=(16, 32, 32), kernel_size=3, stride=2, m=1.0, activation="relu", padding=1,
                 weight_normalization=True, kernel_initializer=LINEAR_INIT, bias_initializer="zeros",
                 **kwargs):
        filters = validation.integers(filters, "filters")
        super().__init__(filters[0], m=m, activation=activation, weight_normalization=weight_normalization,
                         kernel_initializer=kernel_initializer, bias_initializer=bias_initializer, **kwargs)
        self.filters = filters
        self.kernel_size = validation.int_pair(kernel_size, "kernel_size", _odd, "an odd int or a pair of them")
        self.stride = validation.int_pair(stride, "stride")
        self.padding = validation.int_pair(padding, "padding", _nonnegative, "an int >= 0 or a pair of them")
        self.state_size = None

    @property
    def borders(self):
        """The zero border of each tier: `padding` on the first; on the coarser
        tiers the kernel's radius (or `padding` where smaller), which is what
        keeps their circular convolutions from wrapping around: with a zero
        border of the radius r, no interior pixel reads another interior pixel
        across the edge, not even through `A^T A` (radius 2 r)."""
        radius = [(k - 1) // 2 for k in self.kernel_size]
        coarse = tuple(min(p, r) for p, r in zip(self.padding, radius))
        return [self.padding] + [coarse] * (len(self.filters) - 1)

    def tier_shapes(self, x_shape):
        validation.image(x_shape, "MonotoneMultiscale")
        h, w = x_shape[1] + 2 * self.padding[0], x_shape[2] + 2 * self.padding[1]
        shapes = [(h, w, self.filters[0])]
        for f in self.filters[1:]:
            if h % self.stride[0] or w % self.stride[1]:
                raise ValueError(
                    f"Each tier's grid must be divisible by the stride {self.stride}; tier "
                    f"{len(shapes)} is {h} x {w}. Change the padding or the number of tiers. "
                    f"Received: x.shape={tuple(x_shape)}, padding={self.padding}"
                )
            h, w = h // self.stride[0], w // self.stride[1]
            shapes.append((h, w, f))
        for i, ((h, w, _), (bh, bw)) in enumerate(zip(shapes, self.borders)):
            if h <= 2 * bh or w <= 2 * bw:
                raise ValueError(
                    f"Tier {i} is {h} x {w}, and its zero border of {(bh, bw)} leaves no pixel inside: "
                    f"use larger images or fewer tiers. Received: x.shape={tuple(x_shape)}, "
                    f"filters={tuple(self.filters)}, stride={self.stride}, padding={self.padding}"
                )
        return shapes

    def compute_state_shape(self, x_shape):
        return (sum(h * w * c for h, w, c in self.tier_shapes(x_shape)),)

    def build(self, z_shape, x_shape=None):
        self.shapes = self.tier_shapes(x_shape)
        kh, kw = self.kernel_size
        init = self.kernel_initializer
        self.A, self.B, self.A_down = [], [], []
        self.a_scale, self.b_scale, self.down_scale = [], [], []
        for i, (_, _, c) in enumerate(self.shapes):
            self.A.append(self.add_weight(name=f"A_{i}", shape=(kh, kw, c, c), initializer=init))
            self.B.append(self.add_weight(name=f"B_{i}", shape=(kh, kw, c, c), initializer=init))
            if self.weight_normalization:
                self.a_scale.append(self.add_weight(name=f"a_scale_{i}", shape=(), initializer="ones"))
                self.b_scale.append(self.add_weight(name=f"b_scale_{i}", shape=(), initializer="ones"))
            if i + 1 < len(self.shapes):
                c_next = self.shapes[i + 1][2]
                self.A_down.append(self.add_weight(name=f"A_down_{i}", shape=(kh, kw, c, c_next), initializer=init))
                if self.weight_normalization:
                    self.down_scale.append(self.add_weight(name=f"down_scale_{i}", shape=(), initializer="ones"))
        self.kernel = self.add_weight(name="kernel", shape=(kh, kw, x_shape[-1], self.filters[0]), initializer=init)
        self.bias = self.add_weight(name="bias", shape=(self.filters[0],), initializer=self.bias_initializer)
        self._set_border_mask(*[(*shape, border) for shape, border in zip(self.shapes, self.borders)])

    def _normalized(self, weights, scales, i):
        w = tf.convert_to_tensor(weights[i])
        if not self.weight_normalization:
            return w
        return scales[i] * w / tf.norm(w)

    def operator(self):
        m_hat, k_hat, a_hat = [], [], []
        for i, (h, w, c) in enumerate(self.shapes):
            a = kernel_spectrum(self._normalized(self.A, self.a_scale, i), (h, w), full=True)
            b = kernel_spectrum(self._normalized(self.B, self.b_scale, i), (h, w), full=True)
            eye = tf.eye(c, dtype=a.dtype)
            m_hat.append(tf.constant(1.0 - self.m, a.dtype) * eye - tf.matmul(a, a, adjoint_a=True)
                         + b - tf.linalg.adjoint(b))
            if i > 0:
                a_hat.append(a)
            if i + 1 < len(self.shapes):
                k_hat.append(kernel_spectrum(self._normalized(self.A_down, self.down_scale, i), (h, w), full=True))
        return MultiTierOperator(m_hat, k_hat, a_hat, self.stride, self.compute_dtype)

    def implicit_weight(self):
        """`W` as a dense `[n, n]` matrix (for inspection and tests)."""
        return self.operator().to_dense()

    def input_injection(self, x):
        first = _inject(x, self.kernel, self.bias, self.padding)
        first = tf.reshape(first, [-1, int(np.prod(self.shapes[0]))])
        rest = sum(h * w * c for h, w, c in self.shapes[1:])
        if not rest:
            return first
        return tf.concat([first, tf.zeros([tf.shape(x)[0], rest], first.dtype)], axis=1)


    def split_tiers(self, z):
        """The flat state as a list of tier images `[batch, H_i, W_i, c_i]`."""
        parts = tf.split(z, [h * w * c for h, w, c in self.shapes], axis=1)
        return [tf.reshape(p, [-1, h, w, c]) for p, (h, w, c) in zip(parts, self.shapes)]

    def get_config(self):
        config = super().get_config()
        config.pop("units")
        config.update({"filters": list(self.filters), "kernel_size": self.kernel_size,
                       "stride": self.stride, "padding": self.padding})
        return config


@keras.saving.register_keras_serializable(package="keras_implicit")
class MonotoneDense(OperatorFamily):
    """A dense monotone operator equilibrium layer: `z* = sigma(W z* + U x + b)`.

    `W = (1 - m) I - A^T A + B - B^T` makes `I - W >= m I`, so the
    equilibrium is unique for every input and parameter value (Winston &
    Kolter 2020, Theorem 1). It is found by operator splitting:
    Peaceman-Rachford (default; converges for any `alpha > 0`) or
    forward-backward (`alpha <= 2 m / ||I - W||^2`). The default backward
    solves the adjoint system `(I - J W)^T c = dL/dz*` by the same splitting
    on the transposed operator (Theorem 3), reusing the resolvent; any other
    backward mode of the package (e.g. `Implicit(solver="anderson")`) works
    too, and so do the generic solvers.

    Args:
        units: int, width.
        m: float > 0, default 1.0.
        activation: proximal activation, default "relu".
        weight_normalization: default False.
        kernel_initializer, bias_initializer: default torch.nn.Linear's / zeros.
        solver: default "peaceman_rachford"; a splitting solver named by
            string gets `alpha`.
        alpha: float > 0, splitting step, default 1.0.
        tol: default 1e-4, on the relative residual (`stop_mode="rel"`, as
            the paper; see `PeacemanRachford` for the residual used).
        max_iter: default 100.
        stop_mode: default "rel".
        **kwargs: the other solve settings of `ForwardFPI` (`backward`,
            default "implicit", the adjoint by the same solver;
            `return_info`, `on_failure`, `track_metrics`, `jit_loop`,
            `compile_eager`) and Keras layer arguments.

    Weights: `A`, `B`, `kernel` (U) and `bias`.

    Example:

    >>> import keras, keras_implicit as ki
    >>> inputs = keras.Input((64,))
    >>> z = ki.layers.MonotoneDense(87)(inputs)
    >>> keras.Model(inputs, keras.layers.Dense(10)(z)).count_params()
    21673

    Reference: Winston & Kolter, "Monotone operator equilibrium networks",
    NeurIPS 2020 (arXiv 2006.08591).
    """

    cell_class = MonotoneCell
    cell_name = "monotone_cell"

    def __init__(self, units, m=1.0, activation="relu", weight_normalization=False,
                 kernel_initializer=LINEAR_INIT, bias_initializer="zeros", solver="peaceman_rachford",
                 alpha=1.0, tol=1e-4, max_iter=100, stop_mode="rel", **kwargs):
        super().__init__(dict(units=units, m=m, activation=activation, weight_normalization=weight_normalization,
                              kernel_initializer=kernel_initializer, bias_initializer=bias_initializer),
                         solver, alpha, tol=tol, max_iter=max_iter, stop_mode=stop_mode, **kwargs)


@keras.saving.register_keras_serializable(package="keras_implicit")
class MonotoneConv2D(OperatorFamily):
    """A convolutional monDEQ layer: `z* = sigma(W z* + U * x + b)` on `[H, W, C]` states.

    `W z = (1 - m) z - g A^T A z / ||A||^2 + h (B z - B^T z) / ||B||` with
    `A`, `B` 2-D convolutions applied with wrap-around (circular), so that
    `W` is diagonalized by the FFT: the Peaceman-Rachford resolvent
    `(I + alpha (I - W))^{-1}` is one `filters x filters` inverse per
    frequency, computed once per call (Winston & Kolter 2020, Sec. 4).
    `U` is an ordinary "SAME" convolution of the input. The state is the
    input's grid enlarged by a border of `p` zero pixels on each side and
    the activation zeroes that border (the prox of relu plus the constraint
    "border = 0", still a proximal operator), so the wrap-around does not
    join opposite edges of the image, as in the paper's code. With
    `padding="same"` (the default, Keras's convention) `p = (kernel_size -
    1) // 2` and the output is the state without its border, of the input's
    height and width; with an int `p` the output is the whole enlarged state.

    Args:
        filters: int, channels of the state.
        kernel_size: int or (kh, kw), default 3 (for `A`, `B` and `U`).
        m, activation, solver, alpha, tol, max_iter, stop_mode, **kwargs:
            as `MonotoneDense`.
        padding: `"same"` (default: a border of `(kernel_size - 1) // 2`,
            cropped from the output), or an int >= 0 or a pair (rows,
            columns): the zero border, kept in the output.
        weight_normalization: default True (as the paper's convolutional model).

    Call arguments:
        inputs: images `[batch, H, W, C_in]`.

    Returns:
        `[batch, H, W, filters]` with `padding="same"`, else
        `[batch, H + 2 pad_rows, W + 2 pad_cols, filters]`.
    """

    cell_class = MonotoneConvCell
    cell_name = "monotone_conv_cell"

    def __init__(self, filters, kernel_size=3, m=1.0, activation="relu", padding="same", weight_normalization=True,
                 kernel_initializer=LINEAR_INIT, bias_initializer="zeros", solver="peaceman_rachford",
                 alpha=1.0, tol=1e-4, max_iter=100, stop_mode="rel", **kwargs):
        self.same = padding == "same"
        if self.same:
            kh, kw = validation.int_pair(kernel_size, "kernel_size", _odd, "an odd int or a pair of them")
            padding = ((kh - 1) // 2, (kw - 1) // 2)
        super().__init__(dict(filters=filters, kernel_size=kernel_size, m=m, activation=activation,
                              padding=padding, weight_normalization=weight_normalization,
                              kernel_initializer=kernel_initializer, bias_initializer=bias_initializer),
                         solver, alpha, tol=tol, max_iter=max_iter, stop_mode=stop_mode, **kwargs)

    def readout(self, z):
        if not self.same:
            return z
        ph, pw = self.cell.padding
        return z[:, ph:z.shape[1] - ph, pw:z.shape[2] - pw, :]

    def readout_shape(self, state_shape, input_shape):
        return (input_shape[1], input_shape[2], state_shape[2]) if self.same else state_shape

    def get_config(self):
        return {**super().get_config(), **({"padding": "same"} if self.same else {})}


@keras.saving.register_keras_serializable(package="keras_implicit")
class MonotoneMultiscale(OperatorFamily):
    """A multi-tier convolutional monDEQ layer (Winston & Kolter 2020, Sec. 4).

    Tiers of images at decreasing resolution (`filters[i]` channels, each
    grid the previous one subsampled by `stride`) are coupled into one
    equilibrium `z* = sigma(W z* + U x + b)`: within a tier by circular
    convolutions `A_i`, `B_i` as in `MonotoneConv2D`, and from tier `i` to
    `i + 1` by a strided convolution `D_i`, with

        W_ii = (1 - m) I - A_i^T A_i - D_i^T D_i + B_i - B_i^T,
        W_{i+1,i} = -2 A_{i+1}^T D_i,

    so that `I - W >= m I` (see `MultiTierOperator`). The input enters the
    first tier. The Peaceman-Rachford resolvent is exact: per coarse
    frequency a small dense inverse, then block substitution over the tiers.
    With weight normalization every kernel is `scale * kernel / ||kernel||`
    with a learned scalar scale.

    Args:
        filters: channels per tier, default (16, 32, 32).
        kernel_size: odd int or pair, default 3.
        stride: int or pair, subsampling between tiers, default 2 (use
            (1, 2) for 1-D signals stored as 1 x L images).
        padding: zero border of the first tier (the input is zero-padded by
            it), int or pair, default 1. Every tier's border is held at zero
            by the prox: the first tier's of this width, the coarser tiers'
            of the kernel's radius (or `padding` where smaller), so that no
            tier's circular convolutions wrap around the image, as in the
            authors' code (`cell.borders` lists them).
        m, activation, solver, alpha, tol, max_iter, stop_mode,
        weight_normalization (default True), **kwargs: as `MonotoneConv2D`.

    Call arguments:
        inputs: images `[batch, H, W, C_in]`; `H + 2 pad_rows` and
            `W + 2 pad_cols` must be divisible by the strides.

    Returns:
        The last tier, `[batch, H_L, W_L, filters[-1]]` (the whole flat state
        is `layer.solve(x)[0]`; `layer.cell.split_tiers` splits it).
    """

    cell_class = MonotoneMultiscaleCell
    cell_name = "monotone_multiscale_cell"

    def __init__(self, filters=(16, 32, 32), kernel_size=3, stride=2, m=1.0, activation="relu", padding=1,
                 weight_normalization=True, kernel_initializer=LINEAR_INIT, bias_initializer="zeros",
                 solver="peaceman_rachford", alpha=1.0, tol=1e-4, max_iter=100, stop_mode="rel", **kwargs):
        super().__init__(dict(filters=filters, kernel_size=kernel_size, stride=stride, m=m, activation=activation,
                              padding=padding, weight_normalization=weight_normalization,
                              kernel_initializer=kernel_initializer, bias_initializer=bias_initializer),
                         solver, alpha, tol=tol, max_iter=max_iter, stop_mode=stop_mode, **kwargs)

    def readout(self, z):
        return self.cell.split_tiers(z)[-1]

    def readout_shape(self, state_shape, input_shape):
        return tuple(self.cell.tier_shapes(input_shape)[-1])


def tune_alpha(layer, x, alphas=None, verbose=False):
    """Picks the Peaceman-Rachford `alpha` that needs the fewest forward iterations.

    Follows the paper's code: starting from the layer's alpha, halve it while
    the iteration count does not grow, and keep the best. Sets
    `layer.solver` to `PeacemanRachford(best)` and returns `(best, table)`
    where `table` maps each tried alpha to its iteration count.

    Args:
        layer: a built `MonotoneDense`.
        x: a batch of the layer's inputs.
        alphas: optional explicit list of alphas to try instead.
    """
    from keras_implicit.solvers.splitting import PeacemanRachford

    table = {}

    def iterations(a):
        layer.solver = PeacemanRachford(a)
        _, info = layer.solve(tf.convert_to_tensor(x))
        table[a] = int(info.iterations)
        if verbose:
            print(f"alpha={a:.4g}: {table[a]} iterations")
        return table[a]

    if alphas is not None:
        for a in alphas:
            iterations(float(a))
    else:
        a = float(layer.alpha)
        best = iterations(a)
        while a > 1e-4:
            a /= 2.0
            its = iterations(a)
            if its > best:
                break
            best = min(best, its)
    best_alpha = min(table, key=lambda a: (table[a], -a))
    layer.solver = PeacemanRachford(best_alpha)
    layer.alpha = best_alpha
    return best_alpha, dict(sorted(table.items(), key=lambda kv: -kv[0]))


__all__ = [
    "MonotoneCell",
    "MonotoneConv2D",
    "MonotoneConvCell",
    "MonotoneDense",
    "MonotoneMultiscale",
    "MonotoneMultiscaleCell",
    "tune_alpha",
]
