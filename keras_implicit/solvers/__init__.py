"""Fixed-point solvers and their registry.

Every solver is driven by `keras_implicit.solvers.solve`, the package's one
`tf.while_loop`. Identifiers: `"fixed_point"`, `"anderson"`, `"broyden"`, `"halpern"` (any map), and
`"peaceman_rachford"`, `"forward_backward"` (operator splitting for cells
with the structure `z = prox(W z + b)`, e.g. `MonotoneDense`).
"""

from keras_implicit.registry import Registry
from keras_implicit.solvers.anderson import Anderson
from keras_implicit.solvers.base import Solver, solve
from keras_implicit.solvers.broyden import Broyden
from keras_implicit.solvers.fixed_point_iteration import FixedPointIteration
from keras_implicit.solvers.halpern import Halpern
from keras_implicit.solvers.problem import BoundProblem, MapForm, Packer, Problem, Splitting
from keras_implicit.solvers.spec import SolveSpec
from keras_implicit.solvers.splitting import ForwardBackward, PeacemanRachford

get, serialize, deserialize, register = Registry("solver", Solver, (
    FixedPointIteration, Anderson, Broyden, Halpern, PeacemanRachford, ForwardBackward)).functions()

__all__ = [
    "Anderson",
    "BoundProblem",
    "Broyden",
    "FixedPointIteration",
    "ForwardBackward",
    "Halpern",
    "MapForm",
    "PeacemanRachford",
    "Packer",
    "Problem",
    "SolveSpec",
    "Solver",
    "Splitting",
    "deserialize",
    "get",
    "register",
    "serialize",
    "solve",
]
