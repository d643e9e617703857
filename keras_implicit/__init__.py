"""keras-implicit: Keras 3 layers for implicit-depth (equilibrium) models."""

__version__ = "0.1.0"

from keras_implicit import (autodiff, backward, callbacks, config, dynamics, jiio, layers, lipschitz, operators, prox,
                            robustness, solvers)
from keras_implicit.export import export_saved_model
from keras_implicit.fixed_point import ConvergenceError, fixed_point
from keras_implicit.info import CONVERGED, MAX_ITER_REACHED, NON_FINITE, SolverInfo

__all__ = [
    "CONVERGED",
    "ConvergenceError",
    "MAX_ITER_REACHED",
    "NON_FINITE",
    "SolverInfo",
    "autodiff",
    "backward",
    "callbacks",
    "config",
    "dynamics",
    "export_saved_model",
    "fixed_point",
    "jiio",
    "layers",
    "lipschitz",
    "operators",
    "prox",
    "robustness",
    "solvers",
    "tuning",
]


def __getattr__(name):
    # keras-tuner is imported only when `ki.tuning` is first used.
    if name == "tuning":
        import importlib

        return importlib.import_module("keras_implicit.tuning")
    raise AttributeError(f"module 'keras_implicit' has no attribute {name!r}")
