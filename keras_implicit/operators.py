"""Structured linear operators and the splitting problems built on them.

An operator `W` acts on flat states `[batch, n]` (one row per sample, so
`W z` is `z @ W^T`) and provides `multiply`, `multiply_transpose` and
`resolvent(alpha)`, the map `u -> (I + alpha (I - W))^{-1} u` with its
transpose, computed once per solve. monDEQ and LBEN layers build their
`SplittingProblem` from one.
"""

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

    def resolvent(self, alpha):
        """`(I + alpha (I - W))^{-1}`, inverted once (it is invertible whenever I - W >= m I, m > 0)."""
        eye = tf.eye(self.size, dtype=self.matrix.dtype)
        return DenseOperator(tf.linalg.inv(eye + alpha * (eye - self.matrix)))


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
        if other is not None and other.alpha == alpha and _usable_here(other._resolvent.matrix):
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
