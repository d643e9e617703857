"""Structured linear operators and the splitting problems built on them.

An operator `W` acts on flat states `[batch, n]` (one row per sample, so
`W z` is `z @ W^T`) and provides `multiply`, `multiply_transpose` and
`resolvent(alpha)`, the map `u -> (I + alpha (I - W))^{-1} u` with its
transpose, computed once per solve. monDEQ and LBEN layers build their
`SplittingProblem` from one.
"""

import numpy as np
import tensorflow as tf


class DenseOperator:
    """`W` stored as a dense `[n, n]` matrix.

    Example:

    >>> import tensorflow as tf
    >>> op = DenseOperator(tf.eye(3) * 0.5)
    >>> op.multiply(tf.ones([2, 3])).numpy().tolist()
    [[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]]
    """

    def __init__(self, matrix):
        self.matrix = tf.convert_to_tensor(matrix)
        if self.matrix.shape.rank != 2 or self.matrix.shape[0] != self.matrix.shape[1]:
            raise ValueError(f"DenseOperator needs a square matrix. Received: shape={self.matrix.shape}")

    @property
    def size(self):
        return int(self.matrix.shape[0])

    @property
    def tensor(self):
        """The tensor that holds the operator."""
        return self.matrix

    def multiply(self, z):
        return tf.matmul(z, self.matrix, transpose_b=True)

    def multiply_transpose(self, z):
        return tf.matmul(z, self.matrix)

    def to_dense(self):
        return self.matrix

    def identity_minus_norm(self):
        """`||I - W||_2`."""
        eye = tf.eye(self.size, dtype=self.matrix.dtype)
        return float(tf.linalg.svd(eye - self.matrix, compute_uv=False)[0])

    def resolvent(self, alpha):
        """`(I + alpha (I - W))^{-1}`, inverted once (it is invertible whenever I - W >= m I, m > 0)."""
        eye = tf.eye(self.size, dtype=self.matrix.dtype)
        return DenseOperator(tf.linalg.inv(eye + alpha * (eye - self.matrix)))


def kernel_spectrum(kernel, spatial):
    """Per-frequency matrices of a circular 2-D cross-correlation (TF's conv2d).

    For `kernel` of shape `[kh, kw, c_in, c_out]` (center at
    `((kh - 1) // 2, (kw - 1) // 2)`, as "SAME" convolutions) acting with
    wrap-around on `[H, W]` images, `y[p] = sum_d k[d] z[p + d]`, so by the
    shift theorem `y_hat(w) = K(w) z_hat(w)` with
    `K(w) = sum_d k[d] exp(+i w.d) = conj(FFT(k))(w)`. Returns `K` for the
    `[H, W // 2 + 1]` frequencies of `rfft2d`, shape `[H, W // 2 + 1, c_out, c_in]`.
    """
    kh, kw, c_in, c_out = (int(d) for d in kernel.shape)
    h, w = spatial
    ci, cj = (kh - 1) // 2, (kw - 1) // 2
    idx = np.array([[(i - ci) % h, (j - cj) % w] for i in range(kh) for j in range(kw)], np.int32)
    taps = tf.reshape(kernel, [kh * kw, c_in, c_out])
    image = tf.scatter_nd(idx, taps, [h, w, c_in, c_out])  # taps on one pixel add up
    image = tf.transpose(image, [3, 2, 0, 1])  # [c_out, c_in, H, W]
    spectrum = tf.math.conj(tf.signal.fft2d(tf.cast(image, _complex(kernel.dtype))))
    return tf.transpose(spectrum[:, :, :, : w // 2 + 1], [2, 3, 0, 1])


def _complex(dtype):
    return tf.complex128 if dtype == tf.float64 else tf.complex64


class FourierOperator:
    """A circular (shift-invariant) operator on `[H, W, C]` states, stored per frequency.

    `matrices` has shape `[H, W // 2 + 1, C, C]` (complex): the operator maps
    `z_hat(w)` to `matrices[w] @ z_hat(w)` with `z_hat = rfft2d(z)` per
    channel. States arrive flat, `[batch, H * W * C]`, and leave flat. The
    transpose (adjoint) uses the conjugate transposes; the resolvent inverts
    one `C x C` matrix per frequency (Winston & Kolter's FFT resolvent).
    """

    def __init__(self, matrices, spatial, dtype):
        self.matrices = matrices
        self.spatial = tuple(int(d) for d in spatial)
        self.channels = int(matrices.shape[-1])
        self.dtype = tf.as_dtype(dtype)

    @property
    def size(self):
        return self.spatial[0] * self.spatial[1] * self.channels

    @property
    def tensor(self):
        """The tensor that holds the operator."""
        return self.matrices

    def _apply(self, z, adjoint):
        h, w = self.spatial
        c = self.channels
        img = tf.transpose(tf.reshape(z, [-1, h, w, c]), [0, 3, 1, 2])  # [B, C, H, W]
        z_hat = tf.signal.rfft2d(img)
        eq = "hwco,bchw->bohw" if adjoint else "hwoc,bchw->bohw"
        mats = tf.math.conj(self.matrices) if adjoint else self.matrices
        y = tf.signal.irfft2d(tf.einsum(eq, mats, z_hat), fft_length=[h, w])
        return tf.reshape(tf.transpose(y, [0, 2, 3, 1]), [-1, h * w * c])

    def multiply(self, z):
        return self._apply(z, adjoint=False)

    def multiply_transpose(self, z):
        return self._apply(z, adjoint=True)

    def resolvent(self, alpha):
        eye = tf.eye(self.channels, dtype=self.matrices.dtype)
        a = tf.cast(alpha, self.matrices.dtype)
        return FourierOperator(tf.linalg.inv(eye + a * (eye - self.matrices)), self.spatial, self.dtype)

    def identity_minus_norm(self):
        """`||I - W||_2`: the largest singular value over all frequencies."""
        eye = tf.eye(self.channels, dtype=self.matrices.dtype)
        return float(tf.reduce_max(tf.linalg.svd(eye - self.matrices, compute_uv=False)))

    def to_dense(self):
        """The `[n, n]` matrix (for tests and small problems): columns are images of unit vectors."""
        basis = tf.eye(self.size, dtype=self.dtype)
        return tf.transpose(self.multiply(basis))


class SplittingProblem:
    """The structure `z = prox(W z + b)` that operator-splitting solvers use.

    Args:
        operator: the linear operator `W` (e.g. `DenseOperator`).
        bias: `b`, shape `[batch, n]`, or None for zero.
        prox: callable `prox(v, alpha)`, the resolvent of the nonlinearity.
        transpose: use `W^T` instead of `W` (adjoint problems).

    A solver calls `prepare(alpha)` once, outside its loop, then `affine`,
    `resolvent` and `prox` inside it:

    * `affine(z) = W z + b`,
    * `resolvent(u) = (I + alpha (I - W))^{-1} (u + alpha b)`,
    * `prox(v) = prox_alpha(v)`.
    """

    def __init__(self, operator, bias, prox, transpose=False, reuse_from=None):
        self.operator = operator
        self.bias = bias
        self.prox_fn = prox
        self.transpose = transpose
        self.alpha = None
        self._resolvent = None
        self._reuse = reuse_from

    def prepare(self, alpha):
        """Computes the resolvent for `alpha`, or reuses that of `reuse_from`
        (the forward problem of the same call) when it was built for the same
        alpha in the same graph, as the backward pass can."""
        self.alpha = alpha
        other = self._reuse
        if other is not None and other.alpha == alpha and _usable_here(other._resolvent.tensor):
            self._resolvent = other._resolvent
        else:
            self._resolvent = self.operator.resolvent(alpha)

    def affine(self, z):
        wz = self.operator.multiply_transpose(z) if self.transpose else self.operator.multiply(z)
        return wz if self.bias is None else wz + self.bias

    def resolvent(self, u):
        if self.bias is not None:
            u = u + self.alpha * self.bias
        if self.transpose:
            return self._resolvent.multiply_transpose(u)
        return self._resolvent.multiply(u)

    def prox(self, v):
        return self.prox_fn(v, self.alpha)


def _usable_here(t):
    """Whether tensor `t` can be used in the current context (same graph, or eager)."""
    if tf.executing_eagerly():
        return not hasattr(t, "op") or isinstance(t, type(tf.constant(0.0)))
    return getattr(t, "graph", None) is tf.compat.v1.get_default_graph()


def adjoint_prox(j, v):
    """Resolvent of the backward pass's nonlinear part (Winston & Kolter, Theorem 3).

    With `J = diag(j)` the activation's derivative at the equilibrium and
    `v = J dL/dz*`, the adjoint `y = J c` solves `0 in (I - W^T) y + D y - (1 + D) v`
    with `D = (1 - J) / J`. Its resolvent `(I + alpha (D - (1 + D) v))^{-1} u`
    simplifies to `(j u + alpha v) / (j + alpha (1 - j))`, which is exact at
    `j = 0` as well (it returns `v = 0` there), so no entry needs special care.
    """

    def prox(u, alpha):
        return (j * u + alpha * v) / (j + alpha * (1.0 - j))

    return prox
