"""Keras layers: equilibrium cells, the forward/backward FPI layers and model families."""

from keras_implicit.layers.cells import DenseCell
from keras_implicit.layers.explicit import AOLDense, CPLDense, SandwichDense, SLLConv2D, SLLDense
from keras_implicit.layers.fpi import BackwardFPI, ForwardFPI
from keras_implicit.layers.geq import GaussianEquilibrium, GaussianEquilibriumCell
from keras_implicit.layers.fpi_models import (
    EnergyDescentCell,
    FPIGradientDescent,
    FPINetwork,
    FPINetworkCell,
    ReLUEnergy,
)
from keras_implicit.layers.input_optimization import InputOptimization
from keras_implicit.layers.lipschitz import LipschitzCell, LipschitzConv2D, LipschitzConvCell, LipschitzDense
from keras_implicit.layers.monotone import (
    MonotoneCell,
    MonotoneConv2D,
    MonotoneConvCell,
    MonotoneDense,
    MonotoneMultiscale,
    MonotoneMultiscaleCell,
    tune_alpha,
)
from keras_implicit.layers.multibranch import MultiBranchCell, MultiBranchEquilibrium
from keras_implicit.layers.opteq import OptEqCell, OptEqDense
from keras_implicit.layers.single_index import LinearCell, LinearDEQ, SingleIndexCell, SingleIndexDEQ

__all__ = [
    "AOLDense",
    "BackwardFPI",
    "CPLDense",
    "DenseCell",
    "EnergyDescentCell",
    "FPIGradientDescent",
    "FPINetwork",
    "FPINetworkCell",
    "ForwardFPI",
    "GaussianEquilibrium",
    "GaussianEquilibriumCell",
    "InputOptimization",
    "LinearCell",
    "LinearDEQ",
    "LipschitzCell",
    "LipschitzConv2D",
    "LipschitzConvCell",
    "LipschitzDense",
    "MonotoneCell",
    "MonotoneConv2D",
    "MonotoneConvCell",
    "MonotoneDense",
    "MonotoneMultiscale",
    "MonotoneMultiscaleCell",
    "MultiBranchCell",
    "MultiBranchEquilibrium",
    "OptEqCell",
    "OptEqDense",
    "ReLUEnergy",
    "SLLConv2D",
    "SLLDense",
    "SandwichDense",
    "SingleIndexCell",
    "SingleIndexDEQ",
    "tune_alpha",
]
