"""Backward modes: how the gradient of a fixed point is computed.

Identifiers: `"implicit"`, `"phantom"`, `"jacobian_free"`, `"neumann"`, `"unrolled"`.
"""

from keras_implicit.backward.base import BackwardMode
from keras_implicit.backward.implicit import Implicit, adjoint_solve
from keras_implicit.backward.phantom import JacobianFree, Neumann, Phantom
from keras_implicit.backward.unrolled import Unrolled
from keras_implicit.registry import Registry

get, serialize, deserialize, register = Registry(
    "backward", BackwardMode, (Implicit, Phantom, JacobianFree, Neumann, Unrolled)).functions()

__all__ = [
    "BackwardMode",
    "Implicit",
    "JacobianFree",
    "Neumann",
    "Phantom",
    "Unrolled",
    "adjoint_solve",
    "deserialize",
    "get",
    "register",
    "serialize",
]
