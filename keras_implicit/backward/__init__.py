"""Backward modes: how the gradient of a fixed point is computed.

Identifiers: `"implicit"`, `"phantom"`, `"jacobian_free"`, `"unrolled"`.
"""

from keras_implicit.backward.base import BackwardMode
from keras_implicit.backward.implicit import Implicit, adjoint_solve
from keras_implicit.backward.phantom import JacobianFree, Phantom
from keras_implicit.backward.unrolled import Unrolled
from keras_implicit.registry import Registry

_REGISTRY = Registry("backward", BackwardMode)
for _cls in (Implicit, Phantom, JacobianFree, Unrolled):
    _REGISTRY.register(_cls)

get = _REGISTRY.get
serialize = _REGISTRY.serialize
deserialize = _REGISTRY.deserialize
register = _REGISTRY.register

__all__ = [
    "BackwardMode",
    "Implicit",
    "JacobianFree",
    "Phantom",
    "Unrolled",
    "adjoint_solve",
    "deserialize",
    "get",
    "register",
    "serialize",
]
