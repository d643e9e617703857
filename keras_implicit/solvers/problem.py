"""The fixed-point problem as solvers and backward modes see it.

A solver declares what it needs from a problem with its class attribute
`requires`:

* `"map"`: the map `z -> f(z)` itself (fixed-point iteration, Anderson,
  Broyden, Halpern). The driver gives the solver a `MapForm`: the map on a
  flat `[batch, n]` view of the (possibly nested) state.
* `"splitting"`: the structure `z = prox(W z + b)` of a monotone operator
  problem (Peaceman-Rachford, forward-backward). The driver gives the solver
  a `Splitting`: the operator `W`, the bias `b` and the proximal map.

A `Problem` is `f(z, *args)` plus the optional builders of those forms; a
cell provides them as methods (`splitting(x)`, `adjoint_splitting(z_star,
dz, x, forward)`, `anchor(x)`), and `Problem.of(cell)` collects them.
`problem.bind(*args)` fixes the arguments of one solve. The forward solve
and the adjoint solve each receive their bound problem as an argument; a
backward mode builds the adjoint problem from the forward one and never asks
which solver ran.
"""

import tensorflow as tf


def bookkeeping_dtype(dtype):
    """The dtype a solver works in: float32 for half-precision states (float16
    squares underflow below 6e-8 and overflow above 65504: a residual of
    1.2e-4 read as 0, a fixed point at 600 as Inf; Anderson's Gram matrix and
    Broyden's secant products overflow alike), the state's own dtype
    otherwise. A map's flat state, and so every solver's history, residuals,
    tolerance and trace, is kept in it; the map itself is evaluated in the
    state's dtype."""
    dtype = tf.as_dtype(dtype)
    return tf.float32 if dtype in (tf.float16, tf.bfloat16) else dtype


REQUIREMENTS = ("map", "splitting")


class Packer:
    """Maps a nested structure of `[batch, ...]` tensors to `[batch, n]` and back."""

    def __init__(self, template):
        self.template = template
        leaves = tf.nest.flatten(template)
        if not leaves:
            raise ValueError("The fixed-point state must contain at least one tensor.")
        self.shapes = []
        for leaf in leaves:
            if leaf.shape.rank is None or leaf.shape.rank < 1:
                raise ValueError(
                    "Every tensor of the fixed-point state needs a leading batch "
                    f"axis. Received: a tensor of shape {leaf.shape}"
                )
            inner = leaf.shape[1:]
            if not inner.is_fully_defined():
                raise ValueError(
                    "The fixed-point state needs fully known shapes apart from the "
                    f"batch axis. Received: a tensor of shape {leaf.shape}"
                )
            self.shapes.append(inner)
        self.sizes = [int(s.num_elements()) for s in self.shapes]
        self.size = sum(self.sizes)
        self.dtype = leaves[0].dtype
        # The common case, one [batch, n] tensor, costs nothing to pack.
        self.trivial = len(leaves) == 1 and len(self.shapes[0]) == 1

    def pack(self, nested):
        leaves = tf.nest.flatten(nested)
        if self.trivial:
            return leaves[0]
        batch = tf.shape(leaves[0])[0]
        flat = [tf.reshape(leaf, [batch, n]) for leaf, n in zip(leaves, self.sizes)]
        return flat[0] if len(flat) == 1 else tf.concat(flat, axis=1)

    def unpack(self, flat):
        if self.trivial:
            return tf.nest.pack_sequence_as(self.template, [flat])
        batch = tf.shape(flat)[0]
        parts = tf.split(flat, self.sizes, axis=1) if len(self.sizes) > 1 else [flat]
        leaves = [
            # int32 inner shape: an empty one (a [batch] leaf) would convert to float32
            tf.reshape(p, tf.concat([[batch], tf.constant(s.as_list(), tf.int32)], axis=0))
            for p, s in zip(parts, self.shapes)
        ]
        return tf.nest.pack_sequence_as(self.template, leaves)

    def check(self, nested, what="The fixed-point map"):
        """Raises unless `nested` has the state's structure and shapes (as far as
        they are known statically): a map that returns a broadcastable shape
        would otherwise be iterated by broadcasting."""
        try:
            tf.nest.assert_same_structure(nested, self.template, check_types=False)
        except (ValueError, TypeError):
            raise ValueError(f"{what} must return the state's structure. Received: "
                             f"{tf.nest.map_structure(lambda t: tuple(t.shape), nested)!r} for a state "
                             f"{tf.nest.map_structure(lambda t: tuple(t.shape), self.template)!r}") from None
        for leaf, shape in zip(tf.nest.flatten(nested), self.shapes):
            inner = tf.TensorShape(leaf.shape)[1:]
            if not inner.is_compatible_with(shape):
                raise ValueError(f"{what} must return the state's shape [batch, {', '.join(map(str, shape))}]. "
                                 f"Received: a tensor of shape {tuple(leaf.shape)}")


class MapForm:
    """What a `requires = "map"` solver gets: `F(z) = f(z)` on flat states.

    The flat state is in `bookkeeping_dtype` of the state's dtype (float32
    for a half-precision state): the solver's arithmetic runs there, the map
    `f` in the state's own dtype (casts at each evaluation)."""

    requires = "map"

    def __init__(self, fn, template, anchor=None):
        self.packer = Packer(template)
        self._fn = fn
        self._anchor = anchor
        self.block_sizes = self.packer.sizes
        self.flat_dtype = bookkeeping_dtype(self.packer.dtype)

    def _lift(self, flat):
        return tf.cast(flat, self.flat_dtype)

    def __call__(self, z_flat):
        out = self._fn(self.finish(z_flat))
        self.packer.check(out)
        return self._lift(self.packer.pack(out))

    def start(self, z0):
        return self._lift(self.packer.pack(z0))

    def finish(self, z_flat):
        return self.packer.unpack(tf.cast(z_flat, self.packer.dtype))

    def anchor(self):
        """The problem's anchor point (flat), for anchored solvers (`Halpern`)."""
        if self._anchor is None:
            raise ValueError(
                "This problem has no anchor: give the cell an `anchor(x)` method, or use "
                "Halpern(anchor='initial') to anchor at the initial iterate. "
                "Received: anchor='problem'"
            )
        return self._lift(self.packer.pack(self._anchor()))


class Splitting:
    """What a `requires = "splitting"` solver gets: `z = prox(W z + b)` on flat states.

    Args:
        operator: the linear operator `W` (`multiply`, `multiply_transpose`,
            `resolvent(alpha)`), e.g. `operators.DenseOperator`.
        bias: `b`, shape `[batch, n]`, or None for zero.
        prox: callable `prox(v, alpha)`, the resolvent of the nonlinearity.
        transpose: use `W^T` instead of `W` (adjoint problems).
        start: maps the problem's initial state to the flat `[batch, n]`
            variable the splitting iterates on (default: the state itself).
        finish: maps the flat solution back to the problem's state (default:
            itself). The adjoint of a monotone problem iterates on `y = J c`
            from zero and finishes with `c = dz + W^T y`.
        reuse: another `Splitting` of the same operator (the forward problem
            of the same call) whose resolvent may be reused.

    A solver calls `prepare(alpha)` once, outside its loop, then `affine`,
    `resolvent` and `prox` inside it:

    * `affine(z) = W z + b`,
    * `resolvent(u) = (I + alpha (I - W))^{-1} (u + alpha b)`,
    * `prox(v) = prox_alpha(v)`.
    """

    requires = "splitting"

    def __init__(self, operator, bias, prox, transpose=False, start=None, finish=None, reuse=None):
        self.operator = operator
        self.bias = bias
        self.prox_fn = prox
        self.transpose = transpose
        self._start = start
        self._finish = finish
        self._reuse = reuse
        self.alpha = None
        self.resolvent_operator = None
        self.block_sizes = [int(operator.size)]

    def start(self, z0):
        return z0 if self._start is None else self._start(z0)

    def finish(self, z_flat):
        return z_flat if self._finish is None else self._finish(z_flat)

    def prepare(self, alpha):
        """Computes the resolvent for `alpha`, or takes the one `reuse` computed for it."""
        self.alpha = alpha
        other = self._reuse
        if other is not None and other.alpha == alpha and other.resolvent_operator is not None:
            self.resolvent_operator = other.resolvent_operator
        else:
            self.resolvent_operator = self.operator.resolvent(alpha)

    def affine(self, z):
        wz = self.operator.multiply_transpose(z) if self.transpose else self.operator.multiply(z)
        return wz if self.bias is None else wz + self.bias

    def resolvent(self, u):
        if self.bias is not None:
            u = u + self.alpha * self.bias
        if self.transpose:
            return self.resolvent_operator.multiply_transpose(u)
        return self.resolvent_operator.multiply(u)

    def prox(self, v):
        return self.prox_fn(v, self.alpha)


class BoundProblem:
    """One problem instance: the map with its arguments fixed, and its forms.

    `form(solver, z0)` gives the solver what its `requires` names; a
    splitting built here stays available as `self.splitting`, so that the
    adjoint problem of the same call can reuse its resolvent.
    """

    def __init__(self, fn, splitting=None, anchor=None):
        self.map = fn
        self._make_splitting = splitting
        self._anchor = anchor
        self.splitting = None

    def form(self, solver, z0):
        requires = getattr(solver, "requires", "map")
        if requires == "map":
            return MapForm(self.map, z0, self._anchor)
        if requires == "splitting":
            if self._make_splitting is None:
                raise ValueError(
                    f"The solver {solver.name!r} works on the structure z = prox(W z + b) and "
                    "needs a cell that provides it (a `splitting(x)` method, as MonotoneDense's "
                    "cell has); use 'anderson', 'broyden' or 'fixed_point' (or "
                    f"Implicit(solver='anderson')) for a general cell. Received: solver={solver!r}"
                )
            self.splitting = self._make_splitting()
            return self.splitting
        raise ValueError(
            f"A solver's `requires` must be one of {REQUIREMENTS}. "
            f"Received: requires={requires!r} for solver={solver!r}"
        )


class Problem:
    """`z = f(z, *args)` with the optional structure a cell can offer.

    Args:
        f: callable `f(z, *args) -> z` (nested states allowed).
        splitting: optional callable `splitting(*args) -> Splitting`, the
            forward structure for splitting solvers.
        adjoint_splitting: optional callable
            `adjoint_splitting(z_star, dz, *args, forward=None) -> Splitting`,
            the adjoint equation `c = J^T c + dz` as a splitting (`forward`
            is the forward `Splitting` of the same call, or None).
        anchor: optional callable `anchor(*args) -> z`, the anchor of
            anchored solvers.

    Calling the problem evaluates `f`.
    """

    def __init__(self, f, splitting=None, adjoint_splitting=None, anchor=None):
        if not callable(f):
            raise TypeError(f"`f` must be callable. Received: f={f!r}")
        self.f = f
        self.splitting = splitting
        self.adjoint_splitting = adjoint_splitting
        self.anchor = anchor

    @classmethod
    def of(cls, f):
        """`f` itself if it is a `Problem`; a cell's problem (with the structure
        its methods provide) if it is a Keras layer; else the plain map `f`."""
        if isinstance(f, Problem):
            return f
        import keras  # a cell is a Keras layer; plain functions need no Keras

        if isinstance(f, keras.layers.Layer):
            return cls(f, getattr(f, "splitting", None), getattr(f, "adjoint_splitting", None),
                       getattr(f, "anchor", None))
        return cls(f)

    def __call__(self, z, *args):
        return self.f(z, *args)

    def bind(self, *args):
        """The instance of this problem for `args`."""
        return BoundProblem(
            lambda z: self.f(z, *args),
            None if self.splitting is None else (lambda: self.splitting(*args)),
            None if self.anchor is None else (lambda: self.anchor(*args)),
        )

    def bind_adjoint(self, adjoint_map, z_star, dz, args, forward=None):
        """The adjoint problem `c = adjoint_map(c)` at `z_star` for the cotangent
        `dz`, with its splitting form when the problem has one. `forward` is
        the forward `BoundProblem` of the same call (for resolvent reuse)."""
        make = None
        if self.adjoint_splitting is not None:
            reuse = None if forward is None else forward.splitting

            def make():
                return self.adjoint_splitting(z_star, dz, *args, forward=reuse)

        return BoundProblem(adjoint_map, make)
