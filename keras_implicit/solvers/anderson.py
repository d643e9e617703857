"""Anderson acceleration (type II, Walker & Ni 2011), batched with fixed shapes."""

import tensorflow as tf

from keras_implicit.solvers.base import Solver
from keras_implicit.solvers.fixed_point_iteration import check_damping


def check_memory(memory):
    if isinstance(memory, bool) or not isinstance(memory, int) or memory < 1:
        raise ValueError(f"`memory` must be an integer >= 1. Received: memory={memory!r}")
    return memory


class Anderson(Solver):
    """Anderson acceleration of fixed-point iteration.

    Keeps the last `memory` iterates `z_i`, images `f_i = f(z_i)` and
    residuals `r_i = f_i - z_i` and mixes them:

        alpha = argmin ||sum_i alpha_i r_i||^2   s.t.   sum_i alpha_i = 1
        z_next = sum_i alpha_i f_i - (1 - damping) sum_i alpha_i r_i

    The least-squares problem is solved in closed form,
    `alpha = s / sum(s)` with `(H / h + ridge I) s = 1`, where `H_ij = <r_i, r_j>`
    and `h` the mean of its diagonal (so `ridge` is relative to the residual
    scale). The Gram matrix is updated one row per iteration and solved by
    Cholesky. When the weights are not finite (e.g. a degenerate history) the
    step falls back to plain damped iteration for that sample.

    Args:
        memory: int >= 1, history length, default 5.
        ridge: float >= 0, relative Tikhonov regularization, default 1e-4.
        damping: float in (0, 1], default 1.0.

    Example:

    >>> import tensorflow as tf, keras_implicit as ki
    >>> z, info = ki.fixed_point(tf.cos, tf.zeros([2, 3]), solver="anderson", tol=1e-8)
    >>> int(info.iterations) < 20
    True

    Reference: Walker & Ni, "Anderson acceleration for fixed-point
    iterations", SIAM J. Numer. Anal. 2011.
    """

    name = "anderson"

    def __init__(self, memory=5, ridge=1e-4, damping=1.0):
        self.memory = check_memory(memory)
        if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or ridge < 0:
            raise ValueError(f"`ridge` must be a number >= 0. Received: ridge={ridge!r}")
        self.ridge = float(ridge)
        self.damping = check_damping(damping)

    def init(self, F, z):
        m = self.memory
        batch, n = tf.shape(z)[0], tf.shape(z)[1]
        zeros = tf.zeros(tf.stack([batch, m, n]), z.dtype)
        return (zeros, zeros, tf.zeros(tf.stack([batch, m, m]), z.dtype))

    def step(self, F, z, state, k):
        f_hist, r_hist, gram = state
        m = self.memory
        dtype = z.dtype
        fz = F(z)
        r = fz - z
        slot = tf.math.floormod(k, m)
        onehot = tf.one_hot(slot, m, dtype=dtype)  # [m]
        sel = tf.cast(onehot, tf.bool)
        f_hist = tf.where(sel[None, :, None], fz[:, None, :], f_hist)
        r_hist = tf.where(sel[None, :, None], r[:, None, :], r_hist)
        # New row/column of the Gram matrix: <r_i, r>.
        row = tf.einsum("bmn,bn->bm", r_hist, r)
        gram = tf.where(sel[None, :, None], row[:, None, :], gram)
        gram = tf.where(sel[None, None, :], row[:, :, None], gram)

        n_valid = tf.minimum(k + 1, m)
        valid = tf.range(m) < n_valid  # slots filled so far
        valid_f = tf.cast(valid, dtype)
        mask2 = valid_f[:, None] * valid_f[None, :]
        diag = tf.linalg.diag_part(gram) * valid_f[None, :]
        scale = tf.reduce_sum(diag, axis=1) / tf.cast(n_valid, dtype)
        tiny = tf.constant(1e-30 if dtype == tf.float64 else 1e-20, dtype)
        h = gram * mask2[None] / (scale + tiny)[:, None, None]
        eye = tf.eye(m, dtype=dtype)
        # Invalid slots get an identity block and a zero right-hand side.
        h = h + eye[None] * (self.ridge * valid_f + (1.0 - valid_f))[None, :, None]
        rhs = tf.broadcast_to(valid_f[None, :, None], tf.shape(h[:, :, :1]))
        chol = tf.linalg.cholesky(h)
        s = tf.linalg.cholesky_solve(chol, rhs)[:, :, 0]
        alpha = s / tf.reduce_sum(s, axis=1, keepdims=True)
        ok = tf.reduce_all(tf.math.is_finite(alpha), axis=1)
        plain = tf.broadcast_to(onehot[None, :], tf.shape(alpha))
        alpha = tf.where(ok[:, None], alpha, plain)
        f_mix = tf.einsum("bm,bmn->bn", alpha, f_hist)
        if self.damping == 1.0:
            z_next = f_mix
        else:
            r_mix = tf.einsum("bm,bmn->bn", alpha, r_hist)
            z_next = f_mix - (1.0 - self.damping) * r_mix
        # A non-finite mix (not a non-finite f) falls back to the plain step.
        z_ok = tf.reduce_all(tf.math.is_finite(z_next), axis=1, keepdims=True)
        z_next = tf.where(z_ok, z_next, z + self.damping * r)
        return z_next, (f_hist, r_hist, gram), z, r, fz

    def get_config(self):
        return {"memory": self.memory, "ridge": self.ridge, "damping": self.damping}
