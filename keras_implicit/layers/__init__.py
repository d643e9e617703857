"""Keras layers: equilibrium cells and the forward/backward FPI layers."""

from keras_implicit.layers.cells import DenseCell
from keras_implicit.layers.fpi import BackwardFPI, ForwardFPI

__all__ = ["BackwardFPI", "DenseCell", "ForwardFPI"]
