"""keras-tuner search spaces for equilibrium models.

`add_solver_hyperparameters(hp, family)` declares the solve settings of a
family (solver, tolerance, iteration budget, backward mode, and the family's
own constants: `alpha` and `m` for monDEQ, the Lipschitz bound `gamma` for
LBEN, the weight bound `max_norm` for OptEq and GEQ) and returns them as layer arguments. `EquilibriumHyperModel` builds a
classifier around one equilibrium layer per trial: a fixed-point DEQ
(`"deq"`), a monDEQ (`"mondeq"`, `"mondeq_conv"`), an LBEN (`"lben"`), the
FPI_NN network (`"fpi"`), OptEq (`"opteq"`) or GEQ (`"geq"`). Its `fit` adds `CostAwareScore`, which logs

    val_score = val_accuracy - cost_weight * cost

with `cost` the mean forward iterations on the validation data (the sum of
the layers' `val_<layer>_fwd_iters`) or the training time per step in
milliseconds (`cost="time"`), so that a tuner can trade accuracy against
solver work (`objective=keras_tuner.Objective("val_score", "max")`).

Example:

>>> import tempfile, keras_tuner as kt, keras_implicit as ki
>>> hypermodel = ki.tuning.EquilibriumHyperModel("mondeq", input_shape=(64,), classes=10)
>>> tuner = kt.RandomSearch(hypermodel, objective=ki.tuning.OBJECTIVE, max_trials=2,
...                         directory=tempfile.mkdtemp(), project_name="doc")
>>> sorted(tuner.oracle.get_space().values)
['alpha', 'backward', 'learning_rate', 'm', 'max_iter', 'solver', 'tol', 'units']
"""

import time

import keras
import keras_tuner as kt
import numpy as np

from keras_implicit import layers as layers_lib
from keras_implicit import validation

FAMILIES = ("deq", "mondeq", "mondeq_conv", "lben", "fpi", "opteq", "geq")
OBJECTIVE = kt.Objective("val_score", direction="max")

_GENERAL_SOLVERS = ["anderson", "broyden", "fixed_point"]
_SPLITTING_SOLVERS = ["peaceman_rachford", "forward_backward"]


def add_solver_hyperparameters(hp, family="deq", solvers=None, tol=(1e-4, 1e-2), max_iter=(20, 100),
                               backward=("implicit", "phantom")):
    """Declares a family's solve hyperparameters on `hp`; returns them as layer kwargs.

    Args:
        hp: a `keras_tuner.HyperParameters`.
        family: one of `FAMILIES`; chooses the solvers offered and the
            family constants (`alpha`, `m` for monDEQ; `lipschitz` for LBEN;
            `max_norm` for OptEq and GEQ).
        solvers: the solver names to choose from (default: the splitting
            solvers for monDEQ/LBEN, Anderson/Broyden/fixed-point otherwise).
        tol: `(low, high)` of the log-uniform tolerance.
        max_iter: `(low, high)` of the iteration budget (step 10).
        backward: backward modes to choose from.

    Returns:
        A dict of keyword arguments for the family's layer.
    """
    validation.one_of(family, "family", FAMILIES)
    operator = family in ("mondeq", "mondeq_conv", "lben", "opteq")
    solvers = list(solvers or (_SPLITTING_SOLVERS[:1] if family == "lben" else
                               _SPLITTING_SOLVERS if operator else _GENERAL_SOLVERS))
    kwargs = {
        "solver": hp.Choice("solver", solvers),
        "tol": hp.Float("tol", tol[0], tol[1], sampling="log"),
        "max_iter": hp.Int("max_iter", max_iter[0], max_iter[1], step=10),
        "backward": hp.Choice("backward", list(backward)),
    }
    if operator:
        kwargs["alpha"] = hp.Float("alpha", 0.05, 1.0, sampling="log")
    if family in ("mondeq", "mondeq_conv"):
        kwargs["m"] = hp.Float("m", 0.05, 1.0, sampling="log")
    if family == "lben":
        kwargs["lipschitz"] = hp.Float("gamma", 0.5, 10.0, sampling="log")
    if family in ("opteq", "geq"):
        kwargs["max_norm"] = hp.Float("max_norm", 0.5, 0.99)
    return kwargs


class CostAwareScore(keras.callbacks.Callback):
    """Logs `val_score = val_accuracy - cost_weight * cost` at each epoch's end.

    Args:
        cost: `"fwd_iters"` (default; the sum of the logged
            `val_<layer>_fwd_iters`) or `"time"` (mean training milliseconds
            per step in the epoch).
        cost_weight: accuracy given up per unit of cost, default 0.002 (ten
            iterations, or ten milliseconds, are worth 2% accuracy).
        accuracy: the logged accuracy, default `"val_accuracy"`.
    """

    def __init__(self, cost="fwd_iters", cost_weight=0.002, accuracy="val_accuracy"):
        super().__init__()
        self.cost = validation.one_of(cost, "cost", ("fwd_iters", "time"))
        self.cost_weight = validation.number(cost_weight, "cost_weight", low_open=False)
        self.accuracy = accuracy

    def on_epoch_begin(self, epoch, logs=None):
        self._step_times = []

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self._step_times.append(time.perf_counter() - self._start)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or self.accuracy not in logs:
            raise ValueError(
                f"CostAwareScore needs `{self.accuracy}` in the logs (compile with "
                "metrics=['accuracy'] and fit with validation data). Received: logs keys "
                f"{sorted(logs or {})}"
            )
        if self.cost == "time":
            cost = 1000.0 * float(np.mean(self._step_times))
        else:
            keys = [k for k in logs if k.startswith("val_") and k.endswith("_fwd_iters")]
            if not keys:
                raise ValueError(
                    "CostAwareScore(cost='fwd_iters') needs the equilibrium layers' metrics "
                    "`val_<layer>_fwd_iters` (track_metrics=True). Received: logs keys "
                    f"{sorted(logs)}"
                )
            cost = float(sum(logs[k] for k in keys))
        logs["val_cost"] = cost
        logs["val_score"] = float(logs[self.accuracy]) - self.cost_weight * cost


class EquilibriumHyperModel(kt.HyperModel):
    """A classifier around one equilibrium layer, with a search space per family.

    The model is `inputs -> equilibrium layer (named "deq") -> Dense(classes)`
    (LBEN carries its own output layer; `"mondeq_conv"` flattens its image
    state first), trained with Adam on sparse labels and logits. Besides the
    solve settings of `add_solver_hyperparameters`, the width (`units` or
    `filters`) and the learning rate are searched.

    Args:
        family: one of `FAMILIES`.
        input_shape: shape of one sample (`(features,)`, or `(H, W, C)` for
            `"mondeq_conv"`).
        classes: number of classes.
        units: `(low, high)` of the width, default (16, 128) (step 16).
        cost, cost_weight: for `CostAwareScore` (added in `fit`).
        solver_kwargs: passed to `add_solver_hyperparameters`.
    """

    def __init__(self, family, input_shape, classes, units=(16, 128), cost="fwd_iters", cost_weight=0.002,
                 solver_kwargs=None, **kwargs):
        super().__init__(**kwargs)
        self.family = validation.one_of(family, "family", FAMILIES)
        self.input_shape = tuple(input_shape)
        if family == "mondeq_conv":
            validation.image((None,) + self.input_shape, "EquilibriumHyperModel", "input_shape")
        self.classes = validation.integer(classes, "classes", minimum=2)
        self.units = units
        self.score = CostAwareScore(cost, cost_weight)
        self.solver_kwargs = dict(solver_kwargs or {})

    def build(self, hp):
        settings = add_solver_hyperparameters(hp, self.family, **self.solver_kwargs)
        inputs = keras.Input(self.input_shape)
        if self.family == "mondeq_conv":
            filters = hp.Int("filters", 4, 32, step=4)
            z = layers_lib.MonotoneConv2D(filters, name="deq", **settings)(inputs)
            logits = keras.layers.Dense(self.classes)(keras.layers.Flatten()(z))
        else:
            width = hp.Int("units", self.units[0], self.units[1], step=16)
            if self.family == "deq":
                layer = layers_lib.ForwardFPI(layers_lib.DenseCell(width), name="deq", **settings)
            elif self.family == "mondeq":
                layer = layers_lib.MonotoneDense(width, name="deq", **settings)
            elif self.family == "lben":
                layer = layers_lib.LipschitzDense(width, self.classes, name="deq", **settings)
            elif self.family == "opteq":
                layer = layers_lib.OptEqDense(width, name="deq", **settings)
            elif self.family == "geq":
                layer = layers_lib.GaussianEquilibrium(width, name="deq", **settings)
            else:
                layer = layers_lib.FPINetwork(width, hidden=width, name="deq", **settings)
            z = layer(inputs)
            logits = z if self.family == "lben" else keras.layers.Dense(self.classes)(z)
        model = keras.Model(inputs, logits, name=f"{self.family}_classifier")
        model.compile(
            keras.optimizers.Adam(hp.Float("learning_rate", 1e-3, 1e-2, sampling="log")),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        return model

    def fit(self, hp, model, *args, callbacks=None, **kwargs):
        """`model.fit` with `CostAwareScore` first among the callbacks."""
        return model.fit(*args, callbacks=[self.score] + list(callbacks or []), **kwargs)


__all__ = ["CostAwareScore", "EquilibriumHyperModel", "FAMILIES", "OBJECTIVE", "add_solver_hyperparameters"]
