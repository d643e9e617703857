"""Gaussian-kernel equilibrium models (GEQ; Li, Wang & Lin, NeurIPS 2023).

What is known of the paper (its full text is not reachable here; see
`shared/PAPERS.md`): GEQ replaces the linear kernel of OptEq's hidden
objective by a Gaussian kernel between the injected input and the hidden
reconstruction, computed per patch, with `gamma = 0.2 / M` and `M` the
smallest squared input-reconstruction distance over patches; weight
normalization keeps it convergent. The objective below is a reconstruction
with those properties, not the paper's text.

With `a = U x` (the injection, `features` wide), `W` (`features x units`,
`||W||_2 <= max_norm <= 1`), the residual `r = W z - a` cut into patches
`r_p` (consecutive groups of `patch_size` features; one patch when
`patch_size=None`), the layer's output minimizes

    E(x, z) = sum_i (f + g)(z_i) + 1/2 ||z||^2 - <b, z>
              - 1/(2 gamma) sum_p (1 - exp(-gamma ||r_p||^2)),

`f` the convex function of the activation (`prox.Prox.value`) and `g` an
optional prior as in `OptEqDense`. Its stationarity condition is the layer's
fixed-point map

    z = prox_{f + g}(b + W^T (k * r)),   k_p = exp(-gamma ||r_p||^2)

(`k` repeated over each patch's features): the Gaussian weights `k_p`
re-weight each patch's reconstruction error, like an attention over patches.

As `gamma -> 0`, `(1 - exp(-gamma u)) / (2 gamma) -> u / 2` and `E` tends to
`sum f(z) + 1/2 z^T (I - W^T W) z - <b - W^T U x, z> + const`: OptEq's
objective with the injection `b - W^T U x` (tested against `OptEqDense`).
For `gamma > 0` the Hessian of the smooth part is
`I - k W^T W + 2 gamma k W^T r r^T W >= (1 - max_norm^2) I` (one patch), so
`E` is convex whenever `||W||_2 <= 1`, as OptEq's; the Gaussian only adds
curvature. The map's Jacobian `W^T (k I - 2 gamma k r r^T) W` (per patch)
has eigenvalues in `[-0.45 max_norm^2, max_norm^2]` (those of the middle
factor are `exp(-t)` and `exp(-t) (1 - 2 t)`, `t = gamma ||r_p||^2`), so with
`max_norm < 1` plain iteration is a contraction.

`gamma="auto"` sets `gamma = 0.2 / M` from the first batch the layer sees:
`M` the smallest positive `||r_p||^2` over samples and patches at the
starting state `z = 0` (so `r = -U x`; the paper's "distance between input
and reconstruction" at the start of the iteration; zero patches are
skipped, and a batch whose patches are all zero is an error). The value is
kept in the non-trainable weight `gamma` (saved, exported), and never
changed after.
"""

import keras
import tensorflow as tf

from keras_implicit import prox as prox_lib
from keras_implicit import validation
from keras_implicit.layers.family import EquilibriumFamily
from keras_implicit.layers.operator_cell import LINEAR_INIT
from keras_implicit.layers.opteq import _check_box, _check_prior, bounded_weight, check_bound


def _check_gamma(gamma):
    if gamma == "auto":
        return gamma
    if isinstance(gamma, str):
        raise ValueError(f"`gamma` must be 'auto' or a positive number. Received: gamma={gamma!r}")
    return validation.number(gamma, "gamma")


@keras.saving.register_keras_serializable(package="keras_implicit")
class GaussianEquilibriumCell(keras.layers.Layer):
    """The GEQ cell `f(z, x) = prox_{f + g}(b + W^T (k * (W z - U x)))` (see `GaussianEquilibrium`)."""

    def __init__(self, units, features=None, activation="relu", gamma="auto", patch_size=None, prior=None,
                 prior_weight=0.1, box=(-1.0, 1.0), max_norm=0.9, normalization="weight",
                 kernel_initializer=LINEAR_INIT, bias_initializer="zeros", **kwargs):
        if isinstance(prior, dict):
            prior = prox_lib.deserialize(prior)
        super().__init__(**kwargs)
        self.units = validation.integer(units, "units")
        self.state_size = units
        self.features = self.units if features is None else validation.integer(features, "features")
        self.activation = prox_lib.get(activation)
        if not self.activation.supports(1.0):
            raise ValueError(f"GEQ needs prox_1 of the activation. Received: activation={activation!r}")
        self.gamma_setting = _check_gamma(gamma)
        self.patch_size = self.features if patch_size is None else validation.integer(patch_size, "patch_size")
        if self.features % self.patch_size:
            raise ValueError(f"`patch_size` must divide `features` ({self.features}). "
                             f"Received: patch_size={patch_size!r}")
        self.patch_size_setting = patch_size
        self.max_norm = validation.number(max_norm, "max_norm", high=1.0)
        self.normalization = validation.one_of(normalization, "normalization", ("weight", "spectral", None))
        self.box = _check_box(box)
        self.prior = _check_prior(prior, self.activation, prior_weight, self.box)
        self.prior_kind, self.prior_weight = prior, float(prior_weight)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)

    def build(self, z_shape, x_shape=None):
        validation.features(x_shape, "GaussianEquilibriumCell")
        n, d = self.units, self.features
        self.V = self.add_weight(name="V", shape=(d, n), initializer=self.kernel_initializer)
        self.kernel = self.add_weight(name="kernel", shape=(x_shape[-1], d), initializer=self.kernel_initializer)
        self.bias = self.add_weight(name="bias", shape=(n,), initializer=self.bias_initializer)
        start = 0.0 if self.gamma_setting == "auto" else self.gamma_setting
        self.gamma = self.add_weight(name="gamma", shape=(), initializer=keras.initializers.Constant(start),
                                     trainable=False, aggregation="only_first_replica")

    def weight(self):
        """`W` (`features x units`, acting on column vectors): `||W||_2 <= max_norm`."""
        return bounded_weight(self.V, self.max_norm, self.normalization)

    def check_weight(self):
        """With `normalization=None`: raises unless `||W||_2 <= max_norm` (see `check_bound`)."""
        return check_bound(self.V, self.max_norm)

    def prox(self, v, alpha):
        return self.activation.prox(v, alpha) if self.prior is None else self.prior.prox(v, alpha)

    def residual(self, x, z, w=None):
        """`r = W z - U x`, shape `[batch, features]` (`w`: `W`, if already computed)."""
        w = self.weight() if w is None else w
        return tf.matmul(z, w, transpose_b=True) - tf.matmul(x, self.kernel)

    def patch_distances(self, r):
        """`||r_p||^2` per patch, shape `[batch, features / patch_size]`."""
        p = self.patch_size
        return tf.reduce_sum(tf.reshape(tf.square(r), [-1, self.features // p, p]), axis=-1)

    def _gamma(self, dtype):
        return tf.cast(tf.convert_to_tensor(self.gamma), dtype)

    def call(self, z, x):
        w = self.weight()  # once per iteration: W z and W^T (k r) share it
        r = self.residual(x, z, w)
        k = tf.exp(-self._gamma(r.dtype) * self.patch_distances(r))
        kr = tf.repeat(k, self.patch_size, axis=-1) * r
        return self.prox(self.bias + tf.matmul(kr, w), 1.0)

    def objective(self, x, z):
        """`E(x, z)` per sample (`inf` where `z` is outside the prior's or activation's domain)."""
        f = self.activation.value(z) if self.prior is None else self.prior.value(z)
        gamma = self._gamma(z.dtype)
        u = self.patch_distances(self.residual(x, z))
        kernel = -tf.math.expm1(-gamma * u) / (2.0 * gamma)  # (1 - exp(-gamma u)) / (2 gamma), exact near 0
        return (tf.reduce_sum(f, axis=-1) + 0.5 * tf.reduce_sum(tf.square(z), axis=-1)
                - tf.reduce_sum(self.bias * z, axis=-1) - tf.reduce_sum(kernel, axis=-1))

    def calibrate(self, x):
        """With `gamma="auto"`: sets `gamma = 0.2 / M` on the first batch (see the module docstring)."""
        if self.gamma_setting != "auto":
            return None
        u = tf.reshape(self.patch_distances(tf.matmul(x, self.kernel)), [-1])
        inf = tf.constant(float("inf"), u.dtype)
        smallest = tf.reduce_min(tf.where(u > 0, u, inf))  # +inf when there is none
        if tf.executing_eagerly() and float(self.gamma) <= 0 and not bool(tf.math.is_finite(smallest)):
            raise ValueError("gamma='auto' needs a batch with a nonzero input patch (M = min ||U x_p||^2 "
                             "over patches is 0 or not finite). Pass a number as gamma. Received: an input "
                             "whose patches are all zero or not finite")
        current = tf.convert_to_tensor(self.gamma)
        auto = tf.cast(0.2 / smallest, current.dtype)
        return self.gamma.assign(tf.where(current > 0, current, auto))

    def compute_output_shape(self, z_shape, x_shape=None):
        return tuple(z_shape)

    def get_config(self):
        prior = prox_lib.serialize(self.prior_kind) if isinstance(self.prior_kind, prox_lib.Prox) else self.prior_kind
        return {**super().get_config(), "units": self.units, "features": self.features,
                "activation": prox_lib.serialize(self.activation), "gamma": self.gamma_setting,
                "patch_size": self.patch_size_setting, "prior": prior, "prior_weight": self.prior_weight,
                "box": list(self.box), "max_norm": self.max_norm, "normalization": self.normalization,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer)}


@keras.saving.register_keras_serializable(package="keras_implicit")
class GaussianEquilibrium(EquilibriumFamily):
    """A dense GEQ layer: `z* = prox(b + W^T (k * (W z* - U x)))`, the minimizer of `objective`.

    See the module docstring for the objective (a reconstruction of Li, Wang
    & Lin's), its convexity and its `gamma -> 0` limit (OptEq).
    `layer.objective(x, z)` evaluates it per sample.

    Args:
        units: int, width of the state `z`.
        features: int, width of the injection `U x` and the reconstruction
            `W z`; default `units`.
        activation: a proximal activation with a known convex function
            ("relu" default, "leaky_relu", "soft_threshold", "identity",
            "tanh", "sigmoid").
        gamma: "auto" (default: `0.2 / M` from the first batch, see the
            module docstring) or a positive number.
        patch_size: None (one kernel over all features) or an int dividing
            `features`: one Gaussian weight per group of that many
            consecutive features.
        prior, prior_weight, box: as `OptEqDense`.
        max_norm: bound on `||W||_2` in (0, 1], default 0.9.
        normalization: "weight" (default: `W = V min(1, max_norm / ||V||_F)`,
            cheap, and `||W||_2 <= ||W||_F`), "spectral" (the exact
            `||V||_2` by an SVD, at every iteration: slow for wide layers)
            or None (the weight is checked, never clipped).
        solver, backward, tol, max_iter, ...: as `ForwardFPI` (default
            Anderson, implicit backward, tol 1e-4, 50 iterations).

    Example:

    >>> import keras, numpy as np, keras_implicit as ki
    >>> keras.utils.set_random_seed(0)
    >>> layer = ki.layers.GaussianEquilibrium(8, patch_size=4, tol=1e-9, dtype="float64")
    >>> x = np.random.default_rng(0).standard_normal((4, 5))
    >>> z = layer(x)
    >>> gamma = float(layer.cell.gamma)  # set from this first batch
    >>> bool(np.all(layer.objective(x, z) <= layer.objective(x, z + 0.01)))
    True
    """

    cell_class = GaussianEquilibriumCell
    cell_name = "geq_cell"

    def __init__(self, units, features=None, activation="relu", gamma="auto", patch_size=None, prior=None,
                 prior_weight=0.1, box=(-1.0, 1.0), max_norm=0.9, normalization="weight",
                 kernel_initializer=LINEAR_INIT, bias_initializer="zeros", **kwargs):
        super().__init__(dict(units=units, features=features, activation=activation, gamma=gamma,
                              patch_size=patch_size, prior=prior, prior_weight=prior_weight, box=box,
                              max_norm=max_norm, normalization=normalization,
                              kernel_initializer=kernel_initializer, bias_initializer=bias_initializer), **kwargs)

    def call(self, inputs, initial_state=None):
        x = tf.convert_to_tensor(inputs, self.compute_dtype)
        self.cell.calibrate(x)
        if self.cell.normalization is None:
            self.cell.check_weight()
        return super().call(x, initial_state)

    def objective(self, x, z):
        """`E(x, z)` per sample: the function the output minimizes (builds the layer if needed)."""
        x = tf.convert_to_tensor(x, self.compute_dtype)
        if not self.built:
            self(x)
        return self.cell.objective(x, tf.convert_to_tensor(z, self.compute_dtype))


__all__ = ["GaussianEquilibrium", "GaussianEquilibriumCell"]
