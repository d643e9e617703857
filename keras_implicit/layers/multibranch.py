"""Multi-branch equilibrium models (MOptEqs, Li et al. ICLR 2022; GEQ, NeurIPS 2023).

What is known of the papers (their full texts are not reachable here; see
`shared/PAPERS.md`): parallel branches see the input at several scales;
their outputs are fused by averaging "after average pooling or nearest
up-sampling"; weight normalization ensures convergence; GEQ trains with an
Anderson forward pass and phantom gradients. The cell below is a
reconstruction with those properties, not the papers' text.

Branch `b` (scale `s_b`, e.g. `scales=(1, 2)`; a scale may also be a pair `(s_h, s_w)`) holds a state
`z_b` of shape `[H / s_b, W / s_b, filters]` and sees `x_b = avg_pool(x, s_b)`. With
`fuse_b(z) = mean_c resample_b(z_c)` (average pooling to a coarser grid,
nearest up-sampling to a finer one, identity on its own) the joint map is,
for every branch at once,

    r_b = W_b fuse_b(z) - U_b x_b
    z_b <- prox_f(bias_b + W_b^T (k_b * r_b)),   k_b,p = exp(-gamma_b ||r_b,p||^2)

with `W_b`, `U_b` "same" convolutions (`W_b^T` the transposed convolution,
its exact adjoint), `r_b,p` the residual over the `p`-th
`patch_size x patch_size` window (all channels; the whole image when
`patch_size=None`) and `k_b` repeated over each window. This is the dense
`GaussianEquilibrium` map on each branch's fused input; `kernel="linear"`
takes `k = 1` (its `gamma -> 0` limit, the MOptEq/OptEq form).
`gamma="auto"` sets each branch's `gamma_b = 0.2 / M_b` from the first batch
(`M_b` the smallest positive `||(U_b x_b)_p||^2`, as `GaussianEquilibrium`).

Convergence: the weights are bounded, `W_b = V_b min(1, max_norm / rho_b)`,
so `||W_b||_2 <= max_norm`. `rho_b` is exact up to the border: zero-padded to
`(H_b + kh - 1) x (W_b + kw - 1)`, the "same" convolution is a restriction
of the circular convolution on that grid, whose norm the 2-D FFT gives as
the largest singular value of the kernel's `in x out` transfer matrix over
the grid's frequencies (`spectral_bound`). In the
norm that weights each branch by its pixel area (`||z_b|| sqrt(s_h s_w)`), average
pooling and nearest up-sampling are non-expansive and the mean over
branches too, and each branch's map has Lipschitz constant `<= max_norm^2`
(the Jacobian of `r -> k(r) r` has eigenvalues `exp(-t)` and
`exp(-t) (1 - 2 t)`, `t = gamma ||r_p||^2`, all in `[-0.45, 1]`), so the joint map is a
contraction in the max of those norms for `max_norm < 1`: the equilibrium
exists, is unique, and plain iteration reaches it. Unlike the one-branch
layers, no objective is claimed for the fused map.
"""


import keras
import tensorflow as tf

from keras_implicit import prox as prox_lib
from keras_implicit import validation
from keras_implicit.layers.family import EquilibriumFamily
from keras_implicit.layers.geq import _check_gamma
from keras_implicit.layers.operator_cell import LINEAR_INIT

KERNELS = ("gaussian", "linear")


def _check_scales(scales):
    """Each scale an int (both axes) or a pair `(height, width)`; as pairs."""
    message = ("`scales` must be ints or (height, width) pairs that increase, each dividing the next "
               f"(e.g. (1, 2, 4), or ((1, 1), (1, 2)) for 1 x n signals). Received: scales={scales!r}")
    if not isinstance(scales, (tuple, list)) or not scales:
        raise ValueError(message)
    try:
        pairs = tuple(validation.int_pair(s, "scales") for s in scales)
    except ValueError:
        raise ValueError(message) from None
    ok = len(set(pairs)) == len(pairs) and all(
        b[i] % a[i] == 0 for a, b in zip(pairs, pairs[1:]) for i in (0, 1))
    if not ok:
        raise ValueError(message)
    return pairs


def _pool(t, factor):
    return t if factor == (1, 1) else tf.nn.avg_pool2d(t, factor, factor, "VALID")


def _upsample(t, factor):
    return tf.repeat(tf.repeat(t, factor[0], axis=1), factor[1], axis=2) if factor != (1, 1) else t


def _ratio(a, b):
    return (a[0] // b[0], a[1] // b[1])


@keras.saving.register_keras_serializable(package="keras_implicit")
class MultiBranchCell(keras.layers.Layer):
    """The multi-branch cell on the nested state `(z_1, ..., z_B)` (see `MultiBranchEquilibrium`)."""

    def __init__(self, filters, scales=(1, 2), kernel_size=3, activation="relu", kernel="gaussian",
                 gamma="auto", patch_size=None, max_norm=0.9, kernel_initializer=LINEAR_INIT,
                 bias_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        self.filters = validation.integer(filters, "filters")
        self.scales = _check_scales(scales)
        self.kernel_size = validation.int_pair(kernel_size, "kernel_size")
        self.activation = prox_lib.get(activation)
        self.kernel = validation.one_of(kernel, "kernel", KERNELS)
        self.gamma_setting = _check_gamma(gamma)
        self.patch_size = None if patch_size is None else validation.int_pair(patch_size, "patch_size")
        self.max_norm = validation.number(max_norm, "max_norm", high=1.0)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.state_size = None  # known from the input's shape

    def compute_state_shape(self, x_shape):
        validation.image(x_shape, "MultiBranchEquilibrium")
        h, w = x_shape[1], x_shape[2]
        p = self.patch_size or (1, 1)
        unit = (self.scales[-1][0] * p[0], self.scales[-1][1] * p[1])
        if h % unit[0] or w % unit[1]:
            raise ValueError(
                f"The input's height and width must be divisible by the largest scale times the patch size "
                f"{unit}. Received: x.shape={tuple(x_shape)}, scales={self.scales}, "
                f"patch_size={self.patch_size}")
        return tuple((h // sh, w // sw, self.filters) for sh, sw in self.scales)

    def build(self, z_shape, x_shape=None):
        self.shapes = self.compute_state_shape(x_shape)
        kh, kw = self.kernel_size
        f, init = self.filters, self.kernel_initializer
        self.V, self.U, self.biases = [], [], []
        for b in range(len(self.scales)):
            self.V.append(self.add_weight(name=f"V_{b}", shape=(kh, kw, f, f), initializer=init))
            self.U.append(self.add_weight(name=f"kernel_{b}", shape=(kh, kw, x_shape[-1], f), initializer=init))
            self.biases.append(self.add_weight(name=f"bias_{b}", shape=(f,), initializer=self.bias_initializer))
        start = 0.0 if self.gamma_setting == "auto" else self.gamma_setting
        self.gamma = self.add_weight(name="gamma", shape=(len(self.scales),),
                                     initializer=keras.initializers.Constant(start), trainable=False,
                                     aggregation="only_first_replica")

    def spectral_bound(self, b, v=None):
        """`rho_b`: the norm of the circular convolution on the `(H_b + kh - 1) x
        (W_b + kw - 1)` grid into which branch `b`'s "same" convolution embeds
        exactly (the largest singular value of the kernel's transfer matrix over
        that grid's frequencies), so `||conv(V_b)||_2 <= rho_b`."""
        v = tf.convert_to_tensor(self.V[b] if v is None else v)
        wide, complex_dtype = (tf.float64, tf.complex128) if v.dtype == tf.float64 else (tf.float32, tf.complex64)
        (kh, kw), (h, w, _) = self.kernel_size, self.shapes[b]
        taps = tf.transpose(tf.cast(v, wide), [2, 3, 0, 1])  # [in, out, kh, kw]
        taps = tf.pad(taps, [[0, 0], [0, 0], [0, h - 1], [0, w - 1]])
        transfer = tf.transpose(tf.signal.fft2d(tf.cast(taps, complex_dtype)), [2, 3, 0, 1])  # [H', W', in, out]
        gram = tf.matmul(transfer, transfer, adjoint_a=True)
        largest = tf.reduce_max(tf.math.real(tf.linalg.eigvalsh(gram)[..., -1]))
        return tf.cast(tf.sqrt(tf.maximum(largest, tf.constant(1e-30, wide))), v.dtype)

    def weight(self, b):
        """`W_b = V_b min(1, max_norm / rho_b)`: the convolution's norm is at most `max_norm`."""
        v = tf.convert_to_tensor(self.V[b])
        return v * tf.minimum(tf.constant(1.0, v.dtype), self.max_norm / self.spectral_bound(b, v))

    def injection(self, x, b):
        """`U_b x_b` for the branch's pooled input."""
        return tf.nn.conv2d(_pool(x, self.scales[b]), self.U[b], 1, "SAME")

    def fuse(self, z, b):
        """The mean of all branches' states on branch `b`'s grid."""
        s = self.scales[b]
        parts = [_pool(zc, _ratio(s, sc)) if sc <= s else _upsample(zc, _ratio(sc, s))
                 for zc, sc in zip(z, self.scales)]
        return tf.add_n(parts) / len(parts)

    def patch_distances(self, r):
        """`||r_p||^2` per window, shape `[batch, H_b / p, W_b / p]` (`[batch, 1, 1]` without patches)."""
        sq = tf.reduce_sum(tf.square(r), axis=-1, keepdims=True)
        if self.patch_size is None:
            return tf.reduce_sum(sq, axis=[1, 2], keepdims=True)[..., 0]
        p = self.patch_size
        return (tf.nn.avg_pool2d(sq, p, p, "VALID") * (p[0] * p[1]))[..., 0]

    def _kernel_weights(self, r, b):
        if self.kernel == "linear":
            return tf.ones_like(r[..., :1])
        k = tf.exp(-tf.cast(tf.convert_to_tensor(self.gamma)[b], r.dtype) * self.patch_distances(r))[..., None]
        if self.patch_size is None:
            return k
        return _upsample(k, self.patch_size)

    def solve_constants(self):
        """The bounded weights `(W_1, ..., W_B)`, computed once per solve (their
        bound takes an FFT and an eigenvalue problem per frequency)."""
        return tuple(self.weight(b) for b in range(len(self.scales)))

    def call(self, z, x, weights=None):
        weights = self.solve_constants() if weights is None else weights
        out = []
        for b, w in enumerate(weights):
            r = tf.nn.conv2d(self.fuse(z, b), w, 1, "SAME") - self.injection(x, b)
            back = tf.nn.conv2d_transpose(self._kernel_weights(r, b) * r, w, tf.shape(z[b]), 1, "SAME")
            out.append(self.activation.prox(self.biases[b] + back, 1.0))
        return tuple(out)

    def calibrate(self, x):
        """With `gamma="auto"` and the Gaussian kernel: `gamma_b = 0.2 / M_b` on the first batch."""
        if self.gamma_setting != "auto" or self.kernel == "linear":
            return None
        smallest = []
        for b in range(len(self.scales)):
            u = tf.reshape(self.patch_distances(self.injection(x, b)), [-1])
            smallest.append(tf.reduce_min(tf.where(u > 0, u, tf.constant(float("inf"), u.dtype))))
        smallest = tf.stack(smallest)
        current = tf.convert_to_tensor(self.gamma)
        if tf.executing_eagerly() and float(tf.reduce_min(current)) <= 0 and not bool(
                tf.reduce_all(tf.math.is_finite(smallest))):
            raise ValueError("gamma='auto' needs a batch with a nonzero input patch in every branch. Pass a "
                             "number as gamma. Received: an input whose patches are all zero or not finite")
        return self.gamma.assign(tf.where(current > 0, current, tf.cast(0.2 / smallest, current.dtype)))

    def compute_output_shape(self, z_shape, x_shape=None, weights_shape=None):
        return z_shape

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "scales": [list(s) for s in self.scales],
                "kernel_size": list(self.kernel_size), "activation": prox_lib.serialize(self.activation),
                "kernel": self.kernel, "gamma": self.gamma_setting,
                "patch_size": None if self.patch_size is None else list(self.patch_size),
                "max_norm": self.max_norm,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer)}


@keras.saving.register_keras_serializable(package="keras_implicit")
class MultiBranchEquilibrium(EquilibriumFamily):
    """Parallel equilibrium branches at several input scales, solved as one fixed point.

    See the module docstring for the map (a reconstruction of MOptEqs / GEQ's
    multi-branch model) and why it is a contraction. The state is the tuple
    of the branches' images; the output is their fusion on the finest grid
    (`readout="fuse"`, `[batch, H / s_1, W / s_1, filters]`) or the tuple
    (`readout=None`).

    Args:
        filters: int, channels of every branch.
        scales: increasing ints (both axes) or `(height, width)` pairs, each
            dividing the next; default (1, 2). `((1, 1), (1, 2))` pools
            only along the width (1 x n signals).
        kernel_size: int or pair, of the convolutions `W_b` and `U_b`.
        activation: a proximal activation (default "relu").
        kernel: "gaussian" (GEQ, default) or "linear" (MOptEq).
        gamma: "auto" (default) or a positive number (all branches).
        patch_size: None (one Gaussian weight per image), or an int or pair:
            the windows' size; the input's size must be divisible by the
            largest scale times the patch size.
        max_norm: bound on each `||W_b||_2` in (0, 1], default 0.9.
        readout: "fuse" (default) or None.
        solver, backward, tol, max_iter, ...: as `ForwardFPI`; defaults
            Anderson and phantom gradients (as GEQ trains; "implicit" for
            the exact gradient).

    Example:

    >>> import numpy as np, keras_implicit as ki
    >>> layer = ki.layers.MultiBranchEquilibrium(4, scales=(1, 2), patch_size=2)
    >>> layer(np.ones((2, 8, 8, 1), "float32")).shape
    TensorShape([2, 8, 8, 4])
    """

    cell_class = MultiBranchCell
    cell_name = "multibranch_cell"

    def __init__(self, filters, scales=(1, 2), kernel_size=3, activation="relu", kernel="gaussian", gamma="auto",
                 patch_size=None, max_norm=0.9, kernel_initializer=LINEAR_INIT, bias_initializer="zeros",
                 readout="fuse", backward="phantom", **kwargs):
        super().__init__(dict(filters=filters, scales=scales, kernel_size=kernel_size, activation=activation,
                              kernel=kernel, gamma=gamma, patch_size=patch_size, max_norm=max_norm,
                              kernel_initializer=kernel_initializer, bias_initializer=bias_initializer),
                         backward=backward, **kwargs)
        self.readout_mode = validation.one_of(readout, "readout", ("fuse", None))

    def call(self, inputs, initial_state=None):
        x = tf.convert_to_tensor(inputs, self.compute_dtype)
        self.cell.calibrate(x)
        return super().call(x, initial_state)

    def readout(self, z):
        return self.cell.fuse(z, 0) if self.readout_mode == "fuse" else z

    def readout_shape(self, state_shape, input_shape):
        return state_shape[0] if self.readout_mode == "fuse" else state_shape

    def get_config(self):
        return {**super().get_config(), "readout": self.readout_mode}


__all__ = ["MultiBranchCell", "MultiBranchEquilibrium"]
