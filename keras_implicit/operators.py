"""Structured linear operators and the splitting problems built on them.

An operator `W` acts on flat states `[batch, n]` (one row per sample, so
`W z` is `z @ W^T`) and provides `multiply`, `multiply_transpose` and
`resolvent(alpha)`, the map `u -> (I + alpha (I - W))^{-1} u` with its
transpose, computed once per solve. monDEQ and LBEN cells build their
`solvers.Splitting` from one.
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


def kernel_spectrum(kernel, spatial, full=False):
    """Per-frequency matrices of a circular 2-D cross-correlation (TF's conv2d).

    For `kernel` of shape `[kh, kw, c_in, c_out]` (center at
    `((kh - 1) // 2, (kw - 1) // 2)`, as "SAME" convolutions) acting with
    wrap-around on `[H, W]` images, `y[p] = sum_d k[d] z[p + d]`, so by the
    shift theorem `y_hat(w) = K(w) z_hat(w)` with
    `K(w) = sum_d k[d] exp(+i w.d) = conj(FFT(k))(w)`. Returns `K` for the
    `[H, W // 2 + 1]` frequencies of `rfft2d`, shape `[H, W // 2 + 1, c_out, c_in]`
    (or all `[H, W]` frequencies of `fft2d` with `full=True`).
    """
    kh, kw, c_in, c_out = (int(d) for d in kernel.shape)
    h, w = spatial
    ci, cj = (kh - 1) // 2, (kw - 1) // 2
    idx = np.array([[(i - ci) % h, (j - cj) % w] for i in range(kh) for j in range(kw)], np.int32)
    taps = tf.reshape(kernel, [kh * kw, c_in, c_out])
    image = tf.scatter_nd(idx, taps, [h, w, c_in, c_out])  # taps on one pixel add up
    image = tf.transpose(image, [3, 2, 0, 1])  # [c_out, c_in, H, W]
    spectrum = tf.math.conj(tf.signal.fft2d(to_complex(image)))
    if not full:
        spectrum = spectrum[:, :, :, : w // 2 + 1]
    return tf.transpose(spectrum, [2, 3, 0, 1])


def _complex(dtype):
    return tf.complex128 if dtype == tf.float64 else tf.complex64


def to_complex(x):
    """A real tensor as complex. Unlike `tf.cast`, whose gradient casts the
    complex cotangent back and logs "discard the imaginary part" each time,
    `tf.complex`'s gradient takes the real part."""
    x = tf.convert_to_tensor(x)
    return tf.complex(x, tf.zeros_like(x))


def scalar(value, dtype):
    """`value` as a tensor of `dtype`; a Python number goes straight to that dtype
    (tf.cast of a Python float would round it to float32 first)."""
    if isinstance(value, (int, float, complex)):
        return tf.constant(value, dtype=dtype)
    value = tf.convert_to_tensor(value)
    if dtype.is_complex and not value.dtype.is_complex:
        return to_complex(tf.cast(value, dtype.real_dtype))
    return tf.cast(value, dtype)


def dense_matrix(op, dtype):
    """A linear operator as its `[n, n]` matrix (tests and small problems only):
    the images of the unit vectors are its columns."""
    return tf.transpose(op.multiply(tf.eye(op.size, dtype=dtype)))


def inverse(matrices):
    """`tf.linalg.inv` of a batch of square matrices, complex ones included under XLA.

    XLA has no complex `MatrixInverse` (a `jit_compile=True` step, which Keras
    picks by default on a GPU, failed to compile every FFT resolvent), so a
    complex `M = A + iB` is inverted through its real form: the map
    `A + iB -> [[A, -B], [B, A]]` is a ring homomorphism, so the real
    `2n x 2n` inverse is `[[P, -Q], [Q, P]]` with `M^-1 = P + iQ`. One path in
    graph mode and under XLA; the same LU with partial pivoting on twice the size.
    """
    if not matrices.dtype.is_complex:
        return tf.linalg.inv(matrices)
    n = int(matrices.shape[-1])
    a, b = tf.math.real(matrices), tf.math.imag(matrices)
    real_form = tf.concat([tf.concat([a, -b], -1), tf.concat([b, a], -1)], -2)
    inv = tf.linalg.inv(real_form)
    return tf.complex(inv[..., :n, :n], inv[..., n:, :n])


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
        a = scalar(alpha, self.matrices.dtype)
        return FourierOperator(inverse(eye + a * (eye - self.matrices)), self.spatial, self.dtype)

    def identity_minus_norm(self):
        """`||I - W||_2`: the largest singular value over all frequencies."""
        eye = tf.eye(self.channels, dtype=self.matrices.dtype)
        return float(tf.reduce_max(tf.linalg.svd(eye - self.matrices, compute_uv=False)))

    def to_dense(self):
        return dense_matrix(self, self.dtype)


class MultiTierOperator:
    """Winston & Kolter's multi-tier convolutional `W` (Sec. 4), with an exact FFT resolvent.

    Tiers `i = 1..L` hold images `[H_i, W_i, c_i]`; tier `i + 1` has the grid
    of tier `i` subsampled by `stride = (sh, sw)`. With circular convolutions
    `A_i`, `B_i` on tier `i` and `D_i = Down o K_i` (a convolution on tier
    `i` followed by subsampling, the strided convolution `A_{i+1,i}`):

        W_ii      = (1 - m) I - A_i^T A_i - D_i^T D_i + B_i - B_i^T
        W_{i+1,i} = -2 A_{i+1}^T D_i          (all other blocks zero)

    This is `(1 - m) I - A^T A + B - B^T` for the block lower-bidiagonal `A`
    with blocks `A_i`, `D_i`, plus the skew-symmetric part that moves the
    upper off-diagonal block of `A^T A` below the diagonal, so `I - W >= m I`.

    In Fourier space the shift-invariant parts are per-frequency matrices
    and `D_i` couples the `S = sh sw` frequencies of tier `i` that alias to
    one frequency of tier `i + 1`. The block-triangular resolvent
    `(I + alpha (I - W))^{-1}` is therefore exact and cheap: invert each
    diagonal block per coarse frequency (`S c_i x S c_i` matrices, the last
    tier `c_L x c_L`), then substitute forward (backward for the transpose).

    Args:
        shift_invariant: list of `[H_i, W_i, c_i, c_i]` complex spectra of
            `(1 - m) I - A_i^T A_i + B_i - B_i^T` (full `fft2d` grids).
        down: list of `L - 1` spectra `[H_i, W_i, c_{i+1}, c_i]` of the
            convolutions `K_i` before subsampling.
        a_next: list of `L - 1` spectra `[H_{i+1}, W_{i+1}, c_{i+1}, c_{i+1}]` of `A_{i+1}`.
        stride: `(sh, sw)`, each 1 or more.
        dtype: real dtype of the states.
    """

    def __init__(self, shift_invariant, down, a_next, stride, dtype):
        self.m_hat = list(shift_invariant)
        self.k_hat = list(down)
        self.a_hat = list(a_next)
        self.stride = tuple(stride)
        self.dtype = tf.as_dtype(dtype)
        self.shapes = [(int(t.shape[0]), int(t.shape[1]), int(t.shape[2])) for t in self.m_hat]
        self.sizes = [h * w * c for h, w, c in self.shapes]

    @property
    def size(self):
        return sum(self.sizes)


    # -- Fourier-space helpers; spectra are [B, H, W, c] complex ---------------

    def _split_fft(self, z):
        parts = tf.split(z, self.sizes, axis=1) if len(self.sizes) > 1 else [z]
        out = []
        for part, (h, w, c) in zip(parts, self.shapes):
            img = tf.transpose(tf.reshape(part, [-1, h, w, c]), [0, 3, 1, 2])
            out.append(tf.transpose(tf.signal.fft2d(to_complex(img)), [0, 2, 3, 1]))
        return out

    def _join_ifft(self, spectra):
        flat = []
        for spec, (h, w, c) in zip(spectra, self.shapes):
            img = tf.math.real(tf.signal.ifft2d(tf.transpose(spec, [0, 3, 1, 2])))
            flat.append(tf.reshape(tf.transpose(img, [0, 2, 3, 1]), [-1, h * w * c]))
        return tf.concat(flat, axis=1) if len(flat) > 1 else flat[0]

    def _alias(self, spec):
        """[B, H, W, c] -> [B, H', W', S c]: the S fine frequencies over each coarse one."""
        sh, sw = self.stride
        _, h, w, c = spec.shape
        x = tf.reshape(spec, [-1, sh, h // sh, sw, w // sw, c])
        x = tf.transpose(x, [0, 2, 4, 1, 3, 5])
        return tf.reshape(x, [-1, h // sh, w // sw, sh * sw * c])

    def _unalias(self, x, c):
        sh, sw = self.stride
        _, hc, wc, _ = x.shape
        x = tf.reshape(x, [-1, hc, wc, sh, sw, c])
        x = tf.transpose(x, [0, 3, 1, 4, 2, 5])
        return tf.reshape(x, [-1, sh * hc, sw * wc, c])

    def _alias_matrix(self, k_hat):
        """Per coarse frequency, [H', W', c_out, S c_in] = [K(w_a)] over the aliases a."""
        sh, sw = self.stride
        h, w, co, ci = k_hat.shape
        x = tf.reshape(k_hat, [sh, h // sh, sw, w // sw, co, ci])
        x = tf.transpose(x, [1, 3, 4, 0, 2, 5])
        return tf.reshape(x, [h // sh, w // sw, co, sh * sw * ci])

    def _down(self, i, spec):
        """D_i: tier i spectrum -> tier i + 1 spectrum."""
        s = self.stride[0] * self.stride[1]
        k = self._alias_matrix(self.k_hat[i]) / s
        return tf.einsum("hwoc,bhwc->bhwo", k, self._alias(spec))

    def _down_adjoint(self, i, spec):
        """D_i^T: tier i + 1 spectrum -> tier i spectrum (Kᴴ after zero insertion)."""
        s = self.stride[0] * self.stride[1]
        k = self._alias_matrix(self.k_hat[i]) / s
        up = tf.einsum("hwoc,bhwo->bhwc", tf.math.conj(k), spec) * s
        return self._unalias(up, self.shapes[i][2])

    @staticmethod
    def _apply(mats, spec, adjoint=False):
        eq = "hwco,bhwc->bhwo" if adjoint else "hwoc,bhwc->bhwo"
        return tf.einsum(eq, tf.math.conj(mats) if adjoint else mats, spec)

    def _multiply_spectra(self, spec):
        """`W` on the tiers' spectra (a list of `[B, H_i, W_i, c_i]`)."""
        out = []
        for i, zi in enumerate(spec):
            o = self._apply(self.m_hat[i], zi)
            if i < len(spec) - 1:
                o -= self._down_adjoint(i, self._down(i, zi))
            if i > 0:
                o -= 2.0 * self._apply(self.a_hat[i - 1], self._down(i - 1, spec[i - 1]), adjoint=True)
            out.append(o)
        return out

    def multiply(self, z):
        return self._join_ifft(self._multiply_spectra(self._split_fft(z)))

    def multiply_transpose(self, z):
        spec = self._split_fft(z)
        out = []
        for i, zi in enumerate(spec):
            o = self._apply(self.m_hat[i], zi, adjoint=True)
            if i < len(spec) - 1:
                o -= self._down_adjoint(i, self._down(i, zi))
                o -= 2.0 * self._down_adjoint(i, self._apply(self.a_hat[i], spec[i + 1]))
            out.append(o)
        return self._join_ifft(out)

    def resolvent(self, alpha):
        """The exact `(I + alpha (I - W))^{-1}` (block forward substitution)."""
        a = scalar(alpha, self.m_hat[0].dtype)
        s = self.stride[0] * self.stride[1]
        blocks = []
        for i, (h, w, c) in enumerate(self.shapes):
            eye = tf.eye(c, dtype=a.dtype)
            diag = (1.0 + a) * eye - a * self.m_hat[i]  # per fine frequency
            if i == len(self.shapes) - 1:
                blocks.append(inverse(diag))
                continue
            # per coarse frequency: blockdiag over aliases + alpha D^T D
            dmat = self._alias_matrix(diag[:, :, :, :])  # [H', W', c, S c]
            hc, wc = h // self.stride[0], w // self.stride[1]
            eye_s = tf.eye(s, dtype=a.dtype)
            blockdiag = tf.einsum("ab,hwcad->hwacbd", eye_s, tf.reshape(dmat, [hc, wc, c, s, c]))
            blockdiag = tf.reshape(blockdiag, [hc, wc, s * c, s * c])
            k = self._alias_matrix(self.k_hat[i]) / s  # [H', W', c', S c]
            dtd = s * tf.matmul(k, k, adjoint_a=True)  # D^T D in the aliased basis
            blocks.append(inverse(blockdiag + a * dtd))
        return _MultiTierResolvent(self, blocks, alpha)

    def _solve_block(self, blocks, i, spec, adjoint=False):
        if i == len(self.shapes) - 1:
            return self._apply(blocks[i], spec, adjoint=adjoint)
        x = self._apply(blocks[i], self._alias(spec), adjoint=adjoint)
        return self._unalias(x, self.shapes[i][2])

    def _resolvent_apply(self, blocks, alpha, z, transpose):
        a = scalar(alpha, self.m_hat[0].dtype)
        spec = self._split_fft(z)
        n = len(spec)
        x = [None] * n
        if not transpose:  # forward substitution on the lower-triangular blocks
            for i in range(n):
                r = spec[i]
                if i > 0:  # + alpha W_{i,i-1} x_{i-1}
                    r += a * (-2.0) * self._apply(self.a_hat[i - 1], self._down(i - 1, x[i - 1]), adjoint=True)
                x[i] = self._solve_block(blocks, i, r)
        else:  # backward substitution on the transposed (upper-triangular) blocks
            for i in reversed(range(n)):
                r = spec[i]
                if i < n - 1:  # + alpha W_{i+1,i}^T x_{i+1}
                    r += a * (-2.0) * self._down_adjoint(i, self._apply(self.a_hat[i], x[i + 1]))
                x[i] = self._solve_block(blocks, i, r, adjoint=True)
        return self._join_ifft(x)

    def _group(self, spec):
        """The tiers' spectra regrouped by coarsest frequency: `[B, H_L, W_L, N_b]`,
        tier `i` contributing its `S^(L-1-i) c_i` aliases of each coarsest frequency."""
        groups = []
        for i, x in enumerate(spec):
            for _ in range(len(self.shapes) - 1 - i):
                x = self._alias(x)
            groups.append(x)
        return tf.concat(groups, axis=-1)

    def _ungroup(self, x):
        s = self.stride[0] * self.stride[1]
        last = len(self.shapes) - 1
        widths = [s ** (last - i) * c for i, (_, _, c) in enumerate(self.shapes)]
        spec = []
        for i, xi in enumerate(tf.split(x, widths, axis=-1)):
            for k in reversed(range(last - i)):
                xi = self._unalias(xi, s ** k * self.shapes[i][2])
            spec.append(xi)
        return spec

    def frequency_blocks(self):
        """`W` as one dense block per coarsest frequency, in unitary Fourier coordinates.

        `W` maps each coarsest frequency's group of aliased frequencies (all
        tiers) to itself, so in the tiers' Fourier bases, scaled by
        `1 / sqrt(H_i W_i)` to be unitary and grouped, it is block diagonal:
        `[H_L, W_L, N_b, N_b]` with `N_b = sum_i S^(L-1-i) c_i`. Found by
        applying `W` to the `N_b` unit vectors of every group at once.
        """
        last = self.shapes[-1]
        s = self.stride[0] * self.stride[1]
        scales = np.concatenate([np.full(s ** (len(self.shapes) - 1 - i) * c, float(h * w) ** -0.5)
                                 for i, (h, w, c) in enumerate(self.shapes)])
        scale = tf.constant(scales, self.m_hat[0].dtype)  # unitary FFT per tier
        n_b = int(scale.shape[0])
        basis = tf.eye(n_b, dtype=self.m_hat[0].dtype)[:, None, None, :] / scale
        basis = tf.tile(basis, [1, last[0], last[1], 1])  # [N_b, H_L, W_L, N_b]
        columns = self._group(self._multiply_spectra(self._ungroup(basis))) * scale
        return tf.transpose(columns, [1, 2, 3, 0])  # [H_L, W_L, out, in]

    def identity_minus_norm(self):
        """`||I - W||_2` (for the forward-backward bound): the largest singular
        value of `I - W`'s per-frequency blocks (`frequency_blocks`); no `n x n` matrix."""
        blocks = self.frequency_blocks()
        eye = tf.eye(int(blocks.shape[-1]), dtype=blocks.dtype)
        return float(tf.reduce_max(tf.linalg.svd(eye - blocks, compute_uv=False)))

    def to_dense(self):
        return dense_matrix(self, self.dtype)


class _MultiTierResolvent:
    """`(I + alpha (I - W))^{-1}` of a `MultiTierOperator`, applied by block substitution."""

    def __init__(self, op, blocks, alpha):
        self.op = op
        self.blocks = blocks
        self.alpha = alpha
        self.dtype = op.dtype

    @property
    def size(self):
        return self.op.size


    def multiply(self, z):
        return self.op._resolvent_apply(self.blocks, self.alpha, z, transpose=False)

    def multiply_transpose(self, z):
        return self.op._resolvent_apply(self.blocks, self.alpha, z, transpose=True)

    def to_dense(self):
        return dense_matrix(self, self.dtype)


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


def circular_conv(z, kernel):
    """2-D cross-correlation with wrap-around (a circulant operator), "SAME" size.

    `z`: `[batch, H, W, c_in]`; `kernel`: `[kh, kw, c_in, c_out]` with odd
    sizes, centered as a "SAME" convolution.
    """
    kh, kw = int(kernel.shape[0]), int(kernel.shape[1])
    ph, pw = (kh - 1) // 2, (kw - 1) // 2
    if ph:
        z = tf.concat([z[:, -ph:], z, z[:, :ph]], axis=1)
    if pw:
        z = tf.concat([z[:, :, -pw:], z, z[:, :, :pw]], axis=2)
    return tf.nn.conv2d(z, kernel, 1, "VALID")


def circular_conv_transpose(z, kernel):
    """The adjoint of `circular_conv(., kernel)`: `[batch, H, W, c_out] -> [..., c_in]`.

    For odd, centered kernels the adjoint of a circular cross-correlation is
    the circular cross-correlation with the spatially flipped kernel and
    swapped channels.
    """
    flipped = tf.transpose(tf.reverse(kernel, axis=[0, 1]), [0, 1, 3, 2])
    return circular_conv(z, flipped)


class LowRankUpdateResolvent:
    """The resolvent of `W = W_0 - L R^T` (`L`, `R` of shape `[n, p]`, small `p`), by Woodbury.

    With `A = I + alpha (I - W_0)`, whose inverse `base_resolvent` applies
    (e.g. a `FourierOperator`'s per-frequency blocks),

        (I + alpha (I - W))^-1 = (A + alpha L R^T)^-1 = A^-1 - alpha Y C^-1 Z^T,

    where `Y = A^-1 L`, `Z = A^-T R` and the `p x p` capacitance matrix
    `C = I + alpha R^T Y`; its transpose is `A^-T - alpha Z C^-T Y^T`.
    Preparing it costs `2 p` applications of `A^-1` or `A^-T` and holds
    `Y`, `Z` (`[p, n]`) and `C^-1`: no `n x n` matrix is formed.

    Args:
        base_resolvent: an operator applying `A^-1` (`multiply`) and
            `A^-T` (`multiply_transpose`) to rows `[batch, n]`.
        left, right: `L^T`, `R^T`, shape `[p, n]` (one column of the factor per row).
        alpha: the resolvent's step.
    """

    def __init__(self, base_resolvent, left, right, alpha):
        self.base = base_resolvent
        self.alpha = scalar(alpha, left.dtype)
        self.y = base_resolvent.multiply(left)  # rows: (A^-1 L)^T
        self.z = base_resolvent.multiply_transpose(right)  # rows: (A^-T R)^T
        p = int(left.shape[0])
        capacitance = tf.eye(p, dtype=left.dtype) + self.alpha * tf.matmul(right, self.y, transpose_b=True)
        self.capacitance_inverse = inverse(capacitance)

    @property
    def size(self):
        return int(self.y.shape[1])

    def multiply(self, u):
        correction = tf.matmul(tf.matmul(u, self.z, transpose_b=True), self.capacitance_inverse, transpose_b=True)
        return self.base.multiply(u) - self.alpha * tf.matmul(correction, self.y)

    def multiply_transpose(self, u):
        correction = tf.matmul(tf.matmul(u, self.y, transpose_b=True), self.capacitance_inverse)
        return self.base.multiply_transpose(u) - self.alpha * tf.matmul(correction, self.z)

    def to_dense(self):
        return dense_matrix(self, self.y.dtype)


class FunctionOperator:
    """A linear operator on `[batch, n]` given by its two products (matrix-free).

    `multiply(z) = z W^T` and `multiply_transpose(z) = z W` for row vectors.
    `resolvent(alpha)` calls the given `resolvent` (a structured one, e.g.
    a `LowRankUpdateResolvent`) or, without one, forms the `[n, n]` matrix
    by applying the operator to the identity (for the modest `n` of small
    images), as `to_dense` does; the products themselves never do.
    """

    def __init__(self, multiply, multiply_transpose, size, dtype, resolvent=None):
        self._multiply = multiply
        self._multiply_transpose = multiply_transpose
        self._size = int(size)
        self.dtype = tf.as_dtype(dtype)
        self._resolvent = resolvent

    @property
    def size(self):
        return self._size

    def multiply(self, z):
        return self._multiply(z)

    def multiply_transpose(self, z):
        return self._multiply_transpose(z)

    def to_dense(self):
        return dense_matrix(self, self.dtype)

    def identity_minus_norm(self):
        return DenseOperator(self.to_dense()).identity_minus_norm()

    def resolvent(self, alpha):
        if self._resolvent is not None:
            return self._resolvent(alpha)
        return DenseOperator(self.to_dense()).resolvent(alpha)
