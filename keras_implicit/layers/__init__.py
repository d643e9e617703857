"""Keras layers: equilibrium cells, the forward/backward FPI layers and model families."""

from keras_implicit.layers.cells import DenseCell
from keras_implicit.layers.fpi import BackwardFPI, ForwardFPI
from keras_implicit.layers.monotone import (
    MonotoneCell,
    MonotoneConv2D,
    MonotoneConvCell,
    MonotoneDense,
    MonotoneMultiscale,
    MonotoneMultiscaleCell,
    tune_alpha,
)

__all__ = [
    "BackwardFPI",
    "DenseCell",
    "ForwardFPI",
    "MonotoneCell",
    "MonotoneConv2D",
    "MonotoneConvCell",
    "MonotoneDense",
    "MonotoneMultiscale",
    "MonotoneMultiscaleCell",
    "tune_alpha",
]
