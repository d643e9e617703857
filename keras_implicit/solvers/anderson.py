"""Anderson acceleration (type II, Walker & Ni 2011), batched with fixed shapes."""

import tensorflow as tf
from tensorflow.python.ops import control_flow_util  # (whether XLA compiles the graph being traced)

from keras_implicit.solvers.base import Solver
from keras_implicit.solvers.fixed_point_iteration import check_damping
from keras_implicit import validation


# Above this memory the elimination below is unrolled into too many small ops (also under XLA).
_UNROLL_MAX = 8


def _tiny(dtype):
    return tf.constant(1e-30 if dtype == tf.float64 else 1e-20, dtype)


def _in_xla():
    """Whether the graph being traced is compiled by XLA (a nested loop of
    `jit_loop`, or a `jit_compile=True` function); False eagerly."""
    return not tf.executing_eagerly() and control_flow_util.GraphOrParentsInXlaContext(
        tf.compat.v1.get_default_graph())


def _spd_solve_ones(h, unrolled=None):
    """Solves `h s = 1` for a batch of small SPD matrices `h` of shape [b, m, m].

    Where XLA compiles the loop (`unrolled=None`: and m <= 8; `True`/`False`
    forces the choice), Gauss-Jordan elimination on the augmented `[h | 1]`,
    one whole-matrix update per pivot (no pivoting is needed for SPD
    matrices): a few elementwise ops per pivot, which XLA fuses into a few
    kernels (its `solve` on CPU runs a slow expanded loop). Otherwise one
    `tf.linalg.solve` (in float32 for a half-precision `h`): outside XLA the
    elimination's ~7 m small ops are only slower to trace (a memory-5 loop
    with an unrolled backward, batch 32 x 64, medians of 5 rounds: traced in
    149 instead of 195 ms, run in 11.7 against 12.0 ms;
    `python benchmarks/bench_anderson_solve.py --rounds 5`).
    """
    m = h.shape[-1]
    if unrolled is None:
        unrolled = m <= _UNROLL_MAX and _in_xla()
    if not unrolled:
        # A sample with NaN/Inf in its history (a NaN input) would make the batched
        # solve fail for the whole batch ("Input matrix is not invertible"): it
        # solves with the identity instead (its iterate is discarded anyway).
        dtype = h.dtype
        if dtype in (tf.float16, tf.bfloat16):
            h = tf.cast(h, tf.float32)
        finite = tf.reduce_all(tf.math.is_finite(h), axis=[1, 2], keepdims=True)
        h = tf.where(finite, h, tf.eye(m, dtype=h.dtype)[None])
        return tf.cast(tf.linalg.solve(h, tf.ones_like(h[:, :, :1]))[:, :, 0], dtype)
    a = tf.concat([h, tf.ones_like(h[:, :, :1])], axis=2)  # [b, m, m + 1]
    for p in range(m):
        others = tf.constant([[[0.0] if i == p else [1.0] for i in range(m)]], h.dtype)  # [1, m, 1]
        row = a[:, p:p + 1, :]
        a = a - (others * a[:, :, p:p + 1] / row[:, :, p:p + 1]) * row
    return a[:, :, m] / tf.linalg.diag_part(a[:, :, :m])


def check_memory(memory):
    validation.integer(memory, "memory")
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
    scale). The Gram matrix is updated one row per iteration; the small SPD
    system is solved by unrolled elimination where XLA compiles the loop (it
    fuses it), else by `tf.linalg.solve`. When the mix is
    not finite (e.g. a degenerate history) the step falls back to plain
    damped iteration for that sample.

    Args:
        memory: int >= 1, history length, default 5.
        ridge: float > 0, relative Tikhonov regularization, default 1e-4.
        damping: float in (0, 1], default 1.0.
        unrolled_solve: how the small system is solved: `None` (default)
            unrolled elimination where XLA compiles the loop and memory is at
            most 8, else one `tf.linalg.solve`; `True`/`False` forces either.
            `False` traces a
            much smaller graph when the loop itself is differentiated
            (unrolled backward, second derivatives through a backward pass)
            and is what the implicit backward's rarely-run fallback uses.

    Example:

    >>> import tensorflow as tf, keras_implicit as ki
    >>> z, info = ki.fixed_point(tf.cos, tf.zeros([2, 3]), solver="anderson", tol=1e-8)
    >>> int(info.iterations) < 20
    True

    Reference: Walker & Ni, "Anderson acceleration for fixed-point
    iterations", SIAM J. Numer. Anal. 2011.
    """

    name = "anderson"

    def __init__(self, memory=5, ridge=1e-4, damping=1.0, unrolled_solve=None):
        self.memory = check_memory(memory)
        validation.number(ridge, "ridge")
        self.ridge = float(ridge)
        self.damping = check_damping(damping)
        if not any(unrolled_solve is v for v in (None, True, False)):
            raise ValueError(f"`unrolled_solve` must be None, True or False. Received: unrolled_solve={unrolled_solve!r}")
        self.unrolled_solve = unrolled_solve

    def init(self, F, z):
        m = self.memory
        batch, n = tf.shape(z)[0], tf.shape(z)[1]
        zeros = tf.zeros(tf.stack([batch, m, n]), z.dtype)
        return (zeros, zeros, tf.zeros(tf.stack([batch, m, m]), z.dtype))

    def step(self, F, z, state, k):
        f_hist, r_hist, gram = state
        m = self.memory
        fz = F(z)
        r = fz - z
        # Slot k mod m takes the new pair. At k = 0 every slot takes it, so no
        # slot is ever empty and no mask is needed: duplicated columns of the
        # least-squares problem share their weight, which leaves the mix as it
        # would be without them (up to the ridge).
        sel = tf.equal(tf.range(m), tf.math.floormod(k, m)) | tf.equal(k, 0)
        sel_rows = tf.reshape(sel, [1, m, 1])
        f_hist = tf.where(sel_rows, fz[:, None, :], f_hist)
        r_hist = tf.where(sel_rows, r[:, None, :], r_hist)
        # New row and column of the Gram matrix <r_i, r_j>.
        row = tf.linalg.matvec(r_hist, r)
        gram = tf.where(sel_rows, row[:, None, :], gram)
        gram = tf.where(tf.reshape(sel, [1, 1, m]), row[:, :, None], gram)
        # Scale-free ridge: normalize by the mean squared residual.
        scale = tf.linalg.trace(gram) / m + _tiny(z.dtype)
        h = gram / scale[:, None, None] + self.ridge * tf.eye(m, dtype=z.dtype)
        s = _spd_solve_ones(h, self.unrolled_solve)
        alpha = s / tf.reduce_sum(s, axis=1, keepdims=True)
        z_next = tf.linalg.matvec(f_hist, alpha, transpose_a=True)
        if self.damping != 1.0:
            z_next -= (1.0 - self.damping) * tf.linalg.matvec(r_hist, alpha, transpose_a=True)
        # Degenerate weights (not a non-finite f) fall back to the plain step.
        ok = tf.reduce_all(tf.math.is_finite(z_next), axis=1, keepdims=True)
        z_next = tf.where(ok, z_next, z + self.damping * r)
        return z_next, (f_hist, r_hist, gram), z, r, fz

    def get_config(self):
        config = {"memory": self.memory, "ridge": self.ridge, "damping": self.damping}
        if self.unrolled_solve is not None:
            config["unrolled_solve"] = self.unrolled_solve
        return config
