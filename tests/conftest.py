import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import pytest  # noqa: E402

import keras_implicit as ki  # noqa: E402

# XLA compiles each solver loop once per layer and input shape (about 0.8 s on
# a 2-core CPU), and nearly every test builds new layers, so tests run the
# loops uncompiled, except those marked `xla`: `tests/test_xla.py` checks every
# layer family's output and gradients with compiled loops against uncompiled
# ones, and the `jit_compile=True` tests compile whole models as users do.
# `KERAS_IMPLICIT_TEST_XLA=1 pytest` runs every test with compiled loops.
_ALL_XLA = os.environ.get("KERAS_IMPLICIT_TEST_XLA", "0") == "1"


@pytest.fixture(autouse=True)
def _seed():
    # Python's `random` too: Keras draws the seed of an unseeded initializer
    # from it, so without this a test's weights changed from run to run
    keras.utils.set_random_seed(0)
    yield


@pytest.fixture(autouse=True)
def _jit_loops(request):
    ki.config.set_jit_loops(_ALL_XLA or request.node.get_closest_marker("xla") is not None)
    yield
    ki.config.set_jit_loops(True)


try:  # private, long-stable: TensorFlow's registry of graph-mode gradient functions
    from tensorflow.python.framework.ops import _gradient_registry
except ImportError:  # pragma: no cover
    _gradient_registry = None


@pytest.fixture(autouse=True)
def _drop_custom_gradients():
    # In a graph, every `tf.custom_gradient` registers its gradient function
    # under a new name in TensorFlow's global registry, which is never pruned:
    # each traced layer (its graphs, variables and closures) stays alive for
    # the rest of the process. A test worker held 3.5 million objects by the
    # end of the suite, and each full garbage collection took seconds (up to
    # a minute inside one unlucky test). Forget the ones a test registered.
    registry = getattr(_gradient_registry, "_registry", None)
    before = set(registry) if registry is not None else None
    yield
    if registry is not None:
        for name in [n for n in registry if n not in before and n.startswith("CustomGradient-")]:
            del registry[name]
