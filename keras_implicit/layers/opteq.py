"""Optimization-induced equilibrium networks (OptEq; Xie et al., TPAMI 2023).

What is known of the paper (its full text is not reachable here; see
`shared/PAPERS.md`): activations are proximal operators, each unit layer is
the prox of an implicit convex function, the equilibrium solves an explicit
convex problem, and priors enter either by changing that problem (which
changes the architecture) or by steering the fixed-point iteration to one
equilibrium when there are several. The equations below are a
reconstruction with those properties, not the paper's text.

The layer's equilibrium

    z* = prox_{f + g}(W^T W z* + U x + b)

is the first-order optimality condition (`0 in d(f + g)(z) + (I - W^T W) z
- (U x + b)`) of

    E(x, z) = sum_i (f + g)(z_i) + 1/2 z^T (I - W^T W) z - <U x + b, z>,

convex in `z` when `||W||_2 <= 1`, with `f` the convex function whose prox
is the activation (`prox.Prox.value`) and `g` the prior (kind 1):
`"sparse"` (`lam |z|`), `"nonnegative"` (indicator of `z >= 0`), `"box"`
(indicator of `low <= z <= high`) or a user `Prox` (with `identity`
activation: then `f + g = g`). In one dimension `prox_{f + g}` is known for
these: clipping after `prox_f` for the indicators, and for `lam |z|`:
`prox_f(v - lam)` where that is > 0, `prox_f(v + lam)` where that is < 0,
else 0. `W = V min(1, max_norm / ||V||_2)` (exact largest singular value)
keeps `||W||_2 <= max_norm <= 1`; with `max_norm < 1` the map is a
contraction and `E` strongly convex (`I - W^T W >= (1 - max_norm^2) I`).

Priors of kind 2: `anchor="input"` (the injection `U x + b`) or `"learned"`
(a trained vector) makes the default solver `Halpern(anchor="problem")`,
started at the anchor, which converges to the equilibrium nearest the
anchor when the equilibria are not unique (`max_norm = 1` and `W^T W` with
eigenvalue 1).
"""

import keras
import numpy as np
import tensorflow as tf

from keras_implicit import prox as prox_lib
from keras_implicit import validation
from keras_implicit.layers.operator_cell import LINEAR_INIT, OperatorCell, OperatorFamily
from keras_implicit.operators import DenseOperator
from keras_implicit.solvers.halpern import Halpern

PRIORS = ("sparse", "nonnegative", "box")
ANCHORS = ("input", "learned")


class Prior:
    """`prox_{alpha (f + g)}` for the activation's `f` and a prior `g` (elementwise)."""

    def __init__(self, activation, kind, weight=0.1, low=-1.0, high=1.0):
        self.activation, self.kind = activation, kind
        self.weight, self.low, self.high = weight, low, high

    def prox(self, v, alpha):
        act = self.activation
        if isinstance(self.kind, prox_lib.Prox):
            return self.kind.prox(v, alpha)
        if self.kind == "sparse":
            lam = alpha * self.weight
            down, up = act.prox(v - lam, alpha), act.prox(v + lam, alpha)
            return tf.where(down > 0, down, tf.where(up < 0, up, tf.zeros_like(v)))
        z = act.prox(v, alpha)
        if self.kind == "nonnegative":
            return tf.nn.relu(z)
        return tf.clip_by_value(z, self.low, self.high)

    def derivative(self, z):
        if isinstance(self.kind, prox_lib.Prox):
            return self.kind.derivative(z)
        d = self.activation.derivative(z)
        if self.kind == "sparse":
            return tf.where(tf.equal(z, 0), tf.zeros_like(z), d)
        if self.kind == "nonnegative":
            return tf.where(z > 0, d, tf.zeros_like(z))
        return tf.where((z > self.low) & (z < self.high), d, tf.zeros_like(z))

    def value(self, z):
        """`f + g` elementwise."""
        if isinstance(self.kind, prox_lib.Prox):
            return self.kind.value(z)
        f = self.activation.value(z)
        inf = tf.fill(tf.shape(z), tf.constant(float("inf"), z.dtype))
        if self.kind == "sparse":
            return f + self.weight * tf.abs(z)
        if self.kind == "nonnegative":
            return tf.where(z >= 0, f, inf)
        return tf.where((z >= self.low) & (z <= self.high), f, inf)


def _check_prior(prior, activation, weight, box):
    if prior is None:
        return None
    if isinstance(prior, prox_lib.Prox):
        if activation.name != "identity":
            raise ValueError(
                "A user prior (a `prox.Prox` with `prox` and `value`) replaces the activation's "
                "convex function, so it needs activation='identity'. Received: "
                f"activation={activation.name!r}, prior={prior!r}"
            )
        try:
            prior.value(tf.zeros([1]))
        except NotImplementedError:
            raise ValueError(f"A user prior must define `value(z)`, its convex function. Received: prior={prior!r}")
        return Prior(activation, prior)
    validation.one_of(prior, "prior", PRIORS + ("a prox.Prox instance",))
    validation.number(weight, "prior_weight", low_open=False)
    low, high = box  # checked by `_check_box`
    return Prior(activation, prior, float(weight), low, high)


def _check_box(box):
    # numpy scalars too (np.float32(0.5) is no Python float), and a length-2 array
    ok = isinstance(box, (tuple, list, np.ndarray)) and len(box) == 2 and all(
        validation.is_number(v) for v in box) and box[0] < box[1]
    if not ok:
        raise ValueError(f"`box` must be a pair (low, high) with low < high. Received: box={box!r}")
    return float(box[0]), float(box[1])


def _largest_singular_value(v):
    """`||V||_2` (in float32 for half-precision `V`: no SVD kernel takes float16)."""
    wide = tf.float32 if v.dtype in (tf.float16, tf.bfloat16) else v.dtype
    return tf.cast(tf.linalg.svd(tf.cast(v, wide), compute_uv=False)[0], v.dtype)


def bounded_weight(v, max_norm, normalization):
    """`W = V min(1, max_norm / ||V||_2)` (exact largest singular value) with
    `normalization="spectral"`, `V min(1, max_norm / ||V||_F)` with "weight",
    `V` itself with None."""
    v = tf.convert_to_tensor(v)
    if normalization is None:
        return v
    # "weight": the Frobenius norm, an upper bound of ||V||_2 (cheap: no SVD)
    sigma = tf.norm(v) if normalization == "weight" else _largest_singular_value(v)
    return v * tf.minimum(tf.constant(1.0, v.dtype), max_norm / (sigma + 1e-30))


def check_bound(v, max_norm):
    """Raises unless `||V||_2 <= max_norm` (eagerly a ValueError; in a graph
    an assertion, which XLA-compiled steps drop): a user weight that breaks
    the bound is reported, never clipped."""
    sigma = _largest_singular_value(tf.convert_to_tensor(v))
    bound = max_norm * (1 + 1e-6)
    message = ("With normalization=None the weight must keep ||W||_2 <= max_norm; the objective "
               "is not convex otherwise.")
    if tf.executing_eagerly():
        if float(sigma) > bound:
            raise ValueError(f"{message} Received: ||W||_2={float(sigma):.6g}, max_norm={max_norm}")
        return None
    return tf.debugging.assert_less_equal(sigma, tf.constant(bound, sigma.dtype), message=message)


@keras.saving.register_keras_serializable(package="keras_implicit")
class OptEqCell(OperatorCell):
    """The OptEq cell `f(z, x) = prox_{f + g}(W^T W z + U x + b)` (see `OptEqDense`)."""

    def __init__(self, units, activation="relu", prior=None, prior_weight=0.1, box=(-1.0, 1.0), max_norm=1.0,
                 normalization="spectral", anchor=None, kernel_initializer=LINEAR_INIT,
                 bias_initializer="zeros", **kwargs):
        if isinstance(prior, dict):
            prior = prox_lib.deserialize(prior)
        super().__init__(units, activation, kernel_initializer, bias_initializer, **kwargs)
        self.max_norm = validation.number(max_norm, "max_norm", high=1.0)
        self.normalization = validation.one_of(normalization, "normalization", ("spectral", None))
        self.anchor_kind = None if anchor is None else validation.one_of(anchor, "anchor", ANCHORS)
        self.box = _check_box(box)
        self.prior = _check_prior(prior, self.activation, prior_weight, self.box)
        self.prior_kind, self.prior_weight = prior, float(prior_weight)
        self.m = 1.0 - self.max_norm**2  # I - W^T W >= m I

    def build(self, z_shape, x_shape=None):
        validation.features(x_shape, "OptEqCell")
        n = self.units
        self.V = self.add_weight(name="V", shape=(n, n), initializer=self.kernel_initializer)
        self.kernel = self.add_weight(name="kernel", shape=(x_shape[-1], n), initializer=self.kernel_initializer)
        self.bias = self.add_weight(name="bias", shape=(n,), initializer=self.bias_initializer)
        if self.anchor_kind == "learned":
            self.anchor_vector = self.add_weight(name="anchor", shape=(n,), initializer="zeros")

    def weight(self):
        """`W` (`units x units`, acting on column vectors): `||W||_2 <= max_norm`."""
        return bounded_weight(self.V, self.max_norm, self.normalization)

    def check_weight(self):
        """With `normalization=None`: raises unless `||W||_2 <= max_norm` (see `check_bound`)."""
        return check_bound(self.V, self.max_norm)

    def implicit_weight(self):
        """The operator `W^T W` of `z = prox(W^T W z + U x + b)`."""
        w = self.weight()
        return tf.matmul(w, w, transpose_a=True)

    def operator(self):
        return DenseOperator(self.implicit_weight())

    def prox(self, v, alpha):
        return self.activation.prox(v, alpha) if self.prior is None else self.prior.prox(v, alpha)

    def derivative(self, z):
        return self.activation.derivative(z) if self.prior is None else self.prior.derivative(z)

    def anchor(self, x):
        """The Halpern anchor: `U x + b` (`anchor="input"`) or a learned vector."""
        if self.anchor_kind == "learned":
            return tf.zeros_like(self.input_injection(x)) + self.anchor_vector
        return self.input_injection(x)

    def objective(self, x, z):
        """`E(x, z)` per sample (`inf` where `z` is outside the prior's or activation's domain)."""
        w = self.weight()
        c = self.input_injection(x)
        f = self.activation.value(z) if self.prior is None else self.prior.value(z)
        wz = tf.matmul(z, w, transpose_b=True)
        return (tf.reduce_sum(f, axis=-1) + 0.5 * tf.reduce_sum(tf.square(z), axis=-1)
                - 0.5 * tf.reduce_sum(tf.square(wz), axis=-1) - tf.reduce_sum(c * z, axis=-1))

    def get_config(self):
        prior = prox_lib.serialize(self.prior_kind) if isinstance(self.prior_kind, prox_lib.Prox) else self.prior_kind
        return {**super().get_config(), "prior": prior, "prior_weight": self.prior_weight, "box": list(self.box),
                "max_norm": self.max_norm, "normalization": self.normalization, "anchor": self.anchor_kind}


@keras.saving.register_keras_serializable(package="keras_implicit")
class OptEqDense(OperatorFamily):
    """A dense OptEq layer: `z* = prox_{f + g}(W^T W z* + U x + b)`, the minimizer of `objective`.

    See the module docstring for the objective (a reconstruction of Xie et
    al.'s) and the priors. `layer.objective(x, z)` evaluates it per sample;
    at the layer's output it is minimal.

    Args:
        units: int, width.
        activation: a proximal activation with a known convex function:
            "relu" (default), "leaky_relu", "soft_threshold", "identity",
            "tanh", "sigmoid" (the last two with alpha = 1 only).
        prior: None, "sparse", "nonnegative", "box", or a `prox.Prox`
            (with `value`) replacing `f` (needs activation="identity").
        prior_weight: `lam` of "sparse", default 0.1.
        box: `(low, high)` of "box", default (-1, 1).
        max_norm: bound on `||W||_2`, in (0, 1], default 1.0 (the paper's);
            below 1 the equilibrium is unique.
        normalization: "spectral" (default: `W = V min(1, max_norm /
            ||V||_2)`) or None (`W = V`, checked eagerly).
        anchor: None, "input" or "learned": selects `Halpern(anchor="problem")`
            as the default solver (kind-2 prior).
        solver: default "peaceman_rachford" (its iterates are prox outputs,
            so the output lies in the objective's domain; Anderson's mixed
            iterates may leave it by rounding), `Halpern(anchor="problem")`
            with an anchor; any solver of the package works.
        alpha, tol, max_iter, stop_mode, **kwargs: as `MonotoneDense` /
            `ForwardFPI` (defaults 1.0, 1e-4, 100, "abs").

    Example:

    >>> import numpy as np, keras_implicit as ki
    >>> layer = ki.layers.OptEqDense(8, prior="sparse", max_norm=0.9, tol=1e-6)
    >>> x = np.random.default_rng(0).standard_normal((4, 5)).astype("float32")
    >>> z = layer(x)
    >>> bool(np.all(layer.objective(x, z) <= layer.objective(x, z + 0.01)))
    True
    """

    cell_class = OptEqCell
    cell_name = "opteq_cell"

    def __init__(self, units, activation="relu", prior=None, prior_weight=0.1, box=(-1.0, 1.0), max_norm=1.0,
                 normalization="spectral", anchor=None, kernel_initializer=LINEAR_INIT, bias_initializer="zeros",
                 solver=None, alpha=1.0, tol=1e-4, max_iter=100, stop_mode="abs", **kwargs):
        if solver is None:
            solver = Halpern(anchor="problem") if anchor is not None else "peaceman_rachford"
        super().__init__(dict(units=units, activation=activation, prior=prior, prior_weight=prior_weight, box=box,
                              max_norm=max_norm, normalization=normalization, anchor=anchor,
                              kernel_initializer=kernel_initializer, bias_initializer=bias_initializer),
                         solver, alpha, tol=tol, max_iter=max_iter, stop_mode=stop_mode, **kwargs)

    def call(self, inputs, initial_state=None):
        if self.cell.normalization is None:
            self.cell.check_weight()
        return super().call(inputs, initial_state)

    def initial_state(self, inputs):
        """The anchor when there is one (Halpern from its anchor stays on the
        anchor's side of the equilibrium set), else zeros."""
        if self.cell.anchor_kind is None:
            return super().initial_state(inputs)
        return tf.cast(self.cell.anchor(tf.convert_to_tensor(inputs, self.compute_dtype)), self.compute_dtype)

    def objective(self, x, z):
        """`E(x, z)` per sample: the function the output minimizes (builds the layer if needed)."""
        x = tf.convert_to_tensor(x, self.compute_dtype)
        if not self.built:
            self(x)
        return self.cell.objective(x, tf.convert_to_tensor(z, self.compute_dtype))


__all__ = ["OptEqCell", "OptEqDense", "Prior", "bounded_weight", "check_bound"]
