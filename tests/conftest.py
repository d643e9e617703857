import gc
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# pytest-xdist runs one test process per core (`-n auto --maxprocesses 2`).
# TensorFlow's and OpenBLAS's thread pools are sized to every core, so two
# processes ran four busy threads on two cores; one each took the full suite
# from 8 min 16 s to 7 min 51 s on one machine (user CPU 15.2 to 14.2 min).
# Set before TensorFlow and NumPy load; serial runs (`-n 0`) keep every core.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    for _var in ("TF_NUM_INTRAOP_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

# XLA's CPU backend runs LLVM's optimizer over each compiled program; the tests
# check that loops and whole steps compile and match uncompiled graphs, not how
# fast the machine code runs, and compiling dominates those tests. Level 0
# keeps every HLO pass (what XLA computes is unchanged) and skips LLVM's
# optimization: `tests/test_xla.py` with the digits-to-95 % tests went from
# 114 s to 87 s of CPU on one machine. Set `XLA_FLAGS` yourself to override.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

import keras  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.python.framework import ops  # noqa: E402

import keras_implicit as ki  # noqa: E402

# TensorFlow records the Python stack of every op it adds to a graph, for the
# "defined at" part of its runtime error messages; with pytest, Keras and
# autograph on the stack that was 8.6 % of all CPU time in `tests/test_harness.py`
# (98 s -> 84 s without it). No test reads those stacks (the package's own
# errors are Python exceptions raised while tracing), so every op gets the one
# stack recorded here, at import (an empty one crashes XLA's bridge);
# `KERAS_IMPLICIT_TEST_OP_STACKS=1 pytest` records the real ones for debugging.
if os.environ.get("KERAS_IMPLICIT_TEST_OP_STACKS", "0") != "1":
    from tensorflow.python.util import tf_stack  # noqa: E402

    _IMPORT_STACK = tf_stack.extract_stack()
    tf_stack.extract_stack = lambda stacklevel=1: _IMPORT_STACK

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


# Grappler, TensorFlow's graph optimizer, rewrites every new graph before its
# first run; nearly every test traces new graphs and runs each a few times, so
# the rewriting outweighs what it saves (11 % of CPU time in four layer-harness
# cases). Tests marked `xla` keep it: `tests/test_xla.py` checks every family's
# output and gradients in optimized graphs against compiled loops, and the
# tests that start Python (the README demo, two workers, TF-only serving) run
# TensorFlow's defaults. `KERAS_IMPLICIT_TEST_GRAPPLER=1 pytest` keeps it on.
_ALL_GRAPPLER = os.environ.get("KERAS_IMPLICIT_TEST_GRAPPLER", "0") == "1"


@pytest.fixture(autouse=True)
def _grappler(request):
    keep = _ALL_GRAPPLER or request.node.get_closest_marker("xla") is not None
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": not keep})
    yield
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": False})


# Keras feeds `fit`, `evaluate` and `predict` through tf.data pipelines whose
# autotuner runs a background thread per iterator. An iterator that a
# reference cycle keeps alive is freed by the garbage collector later, in
# another test, and freeing it waited for that thread: with py-spy, test
# processes sat idle in `~RootDataset::Iterator` for up to 20 s (the README demo
# test, 12 s alone, took 32 s). The tests check what the models compute, not
# input throughput, so Keras's pipelines run untuned (patched in Keras's private
# `TFEpochIterator`; a distributed dataset is left as it is). The full suite
# went from 6:19-6:31 to 5:48 of wall time on one machine (user time 11:09-11:26
# to 10:38), with the test processes' idle time from 57 s to 17 s; on a faster
# machine, where the stalls were rarer, 3:40-3:58 against 3:49 (noise).
# `KERAS_IMPLICIT_TEST_TF_DATA_AUTOTUNE=1
# pytest` keeps the autotuner.
if os.environ.get("KERAS_IMPLICIT_TEST_TF_DATA_AUTOTUNE", "0") != "1":
    from keras.src.backend.tensorflow.trainer import TFEpochIterator  # noqa: E402

    _UNTUNED = tf.data.Options()
    _UNTUNED.autotune.enabled = False
    _keras_epoch_iterator_init = TFEpochIterator.__init__

    def _untuned_epoch_iterator_init(self, *args, **kwargs):
        _keras_epoch_iterator_init(self, *args, **kwargs)
        if isinstance(self._distributed_dataset, tf.data.Dataset):
            self._distributed_dataset = self._distributed_dataset.with_options(_UNTUNED)

    TFEpochIterator.__init__ = _untuned_epoch_iterator_init


def pytest_collection_finish(session):
    # Collection imports TensorFlow, Keras and the package: hundreds of
    # thousands of objects that live until the process ends. Freezing them keeps the
    # cyclic garbage collector from traversing them again in every full
    # collection, which otherwise costs seconds per test process.
    gc.collect()
    gc.freeze()


_LOADED_GRADIENT = "_gen_gradient_func.<locals>.gradient_func"


@pytest.fixture(autouse=True)
def _forget_loaded_gradients():
    # `tf.saved_model.load` registers each custom gradient of the export in
    # TensorFlow's process-wide gradient registry and never unregisters it, so
    # every in-process reload keeps its function graphs alive for good and the
    # garbage collector walks them ever after. A test's reloads are gone when
    # it ends, so their registrations go too (TensorFlow's own ones stay).
    registry = ops._gradient_registry._registry
    before = set(registry)
    yield
    for name in set(registry) - before:
        if registry[name]["type"].__qualname__ == _LOADED_GRADIENT:
            del registry[name]
