"""One harness every public layer goes through (like Keras' `run_layer_test`).

For each class in `keras_implicit.layers`: build and call it (float64), check
the fixed-point residual (equilibrium layers and cells), round-trip
`get_config`/`from_config` and `.keras` with identical outputs, check the
gradients of the input and of every weight against central finite
differences, and export a model holding it (reloaded, same outputs). A
public layer without a case here fails `test_every_layer_has_a_case`.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_implicit as ki
from keras_implicit import layers as L
from tests import checks

F64 = {"dtype": "float64"}
TOL = {"tol": 1e-11, "max_iter": 500}


_SMALL = keras.initializers.RandomNormal(stddev=0.2, seed=0)  # a recurrent matrix of spectral radius < 1
_B = keras.initializers.Constant(-0.6)  # the single-index feedback b


def _cell_case(cell, x_shape, covered_by):
    """A cell runs inside a `ForwardFPI` (its own call is `cell(z, x)`): the
    fixed-point residual and its own serialization are checked here; the
    `.keras` file, gradients and export of the same cell class run in the
    case of the layer that holds it (`covered_by`)."""
    return lambda: L.ForwardFPI(cell(), **TOL, **F64), x_shape, "cell", covered_by


CASES = {
    "ForwardFPI": (lambda: L.ForwardFPI(L.DenseCell(5, **F64), **TOL, **F64), (3, 4), "equilibrium"),
    "BackwardFPI": (None, None, "backward"),  # test_backward_fpi_harness
    "DenseCell": _cell_case(lambda: L.DenseCell(5, **F64), (3, 4), "ForwardFPI"),
    "FPINetwork": (lambda: L.FPINetwork(4, hidden=6, **TOL, **F64), (3, 5), "equilibrium"),
    "FPINetworkCell": _cell_case(lambda: L.FPINetworkCell(4, hidden=6, **F64), (3, 5), "FPINetwork"),
    "FPIGradientDescent": (lambda: L.FPIGradientDescent(4, hidden=6, l2=0.5, **TOL, **F64), (3, 5),
                           "equilibrium"),
    "EnergyDescentCell": _cell_case(
        lambda: L.EnergyDescentCell(4, energy=L.ReLUEnergy(hidden=6, l2=0.5, **F64), **F64), (3, 5), "FPIGradientDescent"),
    "ReLUEnergy": (lambda: L.ReLUEnergy(hidden=6, **F64), (3, 5), "energy"),
    "MonotoneDense": (lambda: L.MonotoneDense(6, **TOL, **F64), (3, 4), "equilibrium"),
    "MonotoneCell": _cell_case(lambda: L.MonotoneCell(6, **F64), (3, 4), "MonotoneDense"),
    "MonotoneConv2D": (lambda: L.MonotoneConv2D(2, **TOL, **F64), (2, 4, 4, 1), "equilibrium"),
    "MonotoneConvCell": _cell_case(lambda: L.MonotoneConvCell(2, **F64), (2, 4, 4, 1), "MonotoneConv2D"),
    "MonotoneMultiscale": (lambda: L.MonotoneMultiscale((2, 2), **TOL, **F64), (2, 4, 4, 1), "equilibrium"),
    "MonotoneMultiscaleCell": _cell_case(lambda: L.MonotoneMultiscaleCell((2, 2), **F64), (2, 4, 4, 1), "MonotoneMultiscale"),
    "MultiBranchEquilibrium": (lambda: L.MultiBranchEquilibrium(2, scales=(1, 2), patch_size=2, backward="implicit",
                                                                **TOL, **F64), (2, 4, 4, 1), "equilibrium"),
    "MultiBranchCell": _cell_case(lambda: L.MultiBranchCell(2, scales=(1, 2), gamma=0.3, **F64), (2, 4, 4, 1),
                                  "MultiBranchEquilibrium"),
    "OptEqDense": (lambda: L.OptEqDense(6, prior="sparse", max_norm=0.9, **TOL, **F64), (3, 4), "equilibrium"),
    "OptEqCell": _cell_case(lambda: L.OptEqCell(6, activation="tanh", max_norm=0.9, **F64), (3, 4), "OptEqDense"),
    "GaussianEquilibrium": (lambda: L.GaussianEquilibrium(6, features=4, patch_size=2, activation="tanh", **TOL, **F64),
                            (3, 4), "equilibrium"),
    "GaussianEquilibriumCell": _cell_case(lambda: L.GaussianEquilibriumCell(6, gamma=0.3, **F64), (3, 4),
                                          "GaussianEquilibrium"),
    "LipschitzDense": (lambda: L.LipschitzDense(6, 3, **TOL, **F64), (3, 4), "equilibrium"),
    "LipschitzCell": _cell_case(lambda: L.LipschitzCell(6, 3, **F64), (3, 4), "LipschitzDense"),
    "LipschitzConv2D": (lambda: L.LipschitzConv2D(2, 3, **TOL, **F64), (2, 4, 4, 1), "equilibrium"),
    "LipschitzConvCell": _cell_case(lambda: L.LipschitzConvCell(2, 3, **F64), (2, 4, 4, 1), "LipschitzConv2D"),
    "SLLDense": (lambda: L.SLLDense(5, **F64), (3, 5), "explicit"),
    "CPLDense": (lambda: L.CPLDense(5, **F64), (3, 5), "explicit"),
    "AOLDense": (lambda: L.AOLDense(5, **F64), (3, 5), "explicit"),
    "SandwichDense": (lambda: L.SandwichDense(5, **F64), (3, 5), "explicit"),
    "SLLConv2D": (lambda: L.SLLConv2D(2, **F64), (2, 4, 4, 2), "explicit"),
    "InputOptimization": (None, None, "input_optimization"),  # test_input_optimization_harness
    "LinearDEQ": (lambda: L.LinearDEQ(4, output_units=2, recurrent_initializer=_SMALL, **TOL, **F64), (3, 4),
                  "equilibrium"),
    "LinearCell": _cell_case(lambda: L.LinearCell(4, recurrent_initializer=_SMALL, **F64), (3, 4), "LinearDEQ"),
    "SingleIndexDEQ": (lambda: L.SingleIndexDEQ("tanh", recurrent_initializer=_B, **TOL, **F64), (3, 4),
                       "equilibrium"),
    "SingleIndexCell": _cell_case(lambda: L.SingleIndexCell("tanh", recurrent_initializer=_B, **F64), (3, 4),
                                  "SingleIndexDEQ"),
}


def _public_layer_classes():
    return sorted(
        name for name in L.__all__
        if isinstance(getattr(L, name), type) and issubclass(getattr(L, name), keras.layers.Layer)
    )


def test_every_layer_has_a_case():
    assert sorted(CASES) == _public_layer_classes()


def _call(layer, x):
    if isinstance(layer, L.ReLUEnergy):  # energy(x, y): x of the state's size, y the input
        return layer(x[:, :3], x)
    return layer(x)


def _residual(layer, x):
    """`max |cell(z*, x) - z*|` of the layer's own equilibrium."""
    z, _ = layer.solve(x)
    fz = layer.cell(z, x)
    return max(float(tf.reduce_max(tf.abs(a - b))) for a, b in zip(tf.nest.flatten(fz), tf.nest.flatten(z)))


def _check_gradients(layer, x, r):
    def loss():
        return tf.reduce_sum(tf.sin(_call(layer, x)) * r)

    with tf.GradientTape() as tape:
        tape.watch(x)
        value = loss()
    grads = tape.gradient(value, [x] + layer.trainable_variables)
    # An LBEN cell holds the output map that only its layer's readout uses.
    unused = {v.name for v, g in zip(layer.trainable_variables, grads[1:]) if g is None}
    assert unused <= {"output_kernel", "output_bias"}, unused
    variables = [v for v, g in zip(layer.trainable_variables, grads[1:]) if g is not None]
    grads = [grads[0]] + [g for g in grads[1:] if g is not None]
    # one random direction in the input, one in all weights together
    rng = np.random.default_rng(7)
    checks.check_input_fd(lambda t: tf.reduce_sum(tf.sin(_call(layer, t)) * r), x, grads[0], rng)
    checks.check_variables_fd(variables, grads[1:], loss, rng, jointly=True)


@pytest.mark.parametrize("name", sorted(n for n, c in CASES.items() if c[2] == "cell"))
def test_cell_harness(name):
    make, x_shape, _, covered_by = CASES[name]
    keras.utils.set_random_seed(0)
    layer = make()
    x = tf.constant(np.random.default_rng(1).standard_normal(x_shape))
    y = layer(x)
    assert _residual(layer, x) < 1e-8
    cell = layer.cell
    assert type(cell).__name__ == name
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(cell))
    assert type(clone) is type(cell) and clone.get_config() == cell.get_config()
    twin = L.ForwardFPI(clone, **TOL, **F64)
    twin(x)
    twin.set_weights(layer.get_weights())
    for a, b in zip(tf.nest.flatten(twin(x)), tf.nest.flatten(y)):  # a nested state: each block
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-10)
    # the layer that holds this cell class runs the rest of the harness
    family = CASES[covered_by][0]()
    family.build(x.shape)
    assert type(family.cell) is type(cell)


@pytest.mark.parametrize("name", sorted(n for n, c in CASES.items()
                                        if c[2] not in ("backward", "cell", "input_optimization")))
def test_layer_harness(name, tmp_path):
    make, x_shape, kind = CASES[name]
    keras.utils.set_random_seed(0)
    layer = make()
    x = tf.constant(np.random.default_rng(1).standard_normal(x_shape))
    y = _call(layer, x)
    assert np.isfinite(y.numpy()).all()
    if kind == "equilibrium":
        assert _residual(layer, x) < 1e-8

    # config round trip: same class, same config, same output with the same weights
    clone = type(layer).from_config(layer.get_config())
    _call(clone, x)
    clone.set_weights(layer.get_weights())
    assert clone.get_config() == layer.get_config()
    np.testing.assert_allclose(_call(clone, x).numpy(), y.numpy(), atol=1e-10)

    # .keras round trip inside a model
    inputs = keras.Input(x_shape[1:], dtype="float64")
    if kind == "energy":
        model = keras.Model(inputs, layer(inputs[:, :3], inputs))
    else:
        model = keras.Model(inputs, layer(inputs))
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(loaded(x).numpy(), y.numpy(), atol=1e-10)

    r = tf.constant(np.random.default_rng(2).standard_normal(y.shape))
    _check_gradients(layer, x, r)

    names = ki.export_saved_model(model, tmp_path / "export")
    reloaded = tf.saved_model.load(str(tmp_path / "export"))  # keep it: its variables live with it
    served = reloaded.serve(x)
    np.testing.assert_allclose(served.numpy(), y.numpy(), atol=1e-9)
    if kind == "equilibrium":
        assert f"{layer.name}_forward" in names and f"{layer.name}_backward" in names


def test_backward_fpi_harness(tmp_path):
    keras.utils.set_random_seed(0)
    fwd = L.ForwardFPI(L.DenseCell(5, **F64), **TOL, **F64)
    x = tf.constant(np.random.default_rng(1).standard_normal((3, 4)))
    z = fwd(x)
    dz = tf.constant(np.random.default_rng(2).standard_normal((3, 5)))
    node = fwd.backward_layer(tol=1e-12)
    c, dx = node((x, z, dz))
    # the adjoint's residual: c = J^T c + dz
    with tf.GradientTape() as tape:
        tape.watch(z)
        fz = fwd.cell(z, x)
    jtc = tape.gradient(fz, z, output_gradients=c)
    assert float(tf.reduce_max(tf.abs(jtc + dz - c))) < 1e-10
    clone = L.BackwardFPI.from_config(node.get_config())
    assert clone.get_config() == node.get_config()
    xi, zi, dzi = (keras.Input(s, dtype="float64") for s in ((4,), (5,), (5,)))
    model = keras.Model([xi, zi, dzi], list(node((xi, zi, dzi))))
    model.save(tmp_path / "b.keras")
    loaded = keras.models.load_model(tmp_path / "b.keras")
    for a, b in zip(loaded([x, z, dz]), (c, dx)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-10)
    # dx is the gradient of <z*, dz> through the forward layer
    with tf.GradientTape() as tape:
        tape.watch(x)
        s = tf.reduce_sum(fwd(x) * dz)
    np.testing.assert_allclose(dx.numpy(), tape.gradient(s, x).numpy(), rtol=1e-8)


@pytest.mark.parametrize("backward", ["implicit", "phantom", "jacobian_free", "unrolled",
                                      {"class_name": "implicit", "config": {"solver": "broyden", "tol": 1e-9,
                                                                            "max_iter": 80, "stop_mode": "rel"}}])
def test_backward_modes_serialize_with_the_layer(backward, tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    layer = L.ForwardFPI(L.DenseCell(5), backward=backward, name="deq")
    model = keras.Model(inputs, layer(inputs))
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras").get_layer("deq")
    assert loaded.backward == layer.backward
    assert ki.backward.deserialize(ki.backward.serialize(layer.backward)) == layer.backward


@keras.saving.register_keras_serializable(package="test_harness")
def _reconstruction(x, z, target):
    """The inner loss of the InputOptimization case: fit z* to the target, a small prior on x."""
    return tf.reduce_sum((z - target) ** 2, axis=-1) + 0.1 * tf.reduce_sum(x**2, axis=-1)


def test_input_optimization_harness(tmp_path):
    keras.utils.set_random_seed(0)
    layer = L.InputOptimization(L.DenseCell(5, **F64), _reconstruction, alpha_x=0.2, tol=1e-11, max_iter=1000,
                                **F64)
    rng = np.random.default_rng(1)
    x0, target = tf.constant(rng.standard_normal((3, 4))), tf.constant(0.3 * rng.standard_normal((3, 5)))
    x, z = layer((x0, target))
    _, _, _, info = layer.joint_solve(x0, target)
    assert np.all(info.block_residuals.numpy() < 1e-8)  # KKT: equilibrium, stationarity, adjoint

    clone = L.InputOptimization.from_config(layer.get_config())
    clone((x0, target))
    clone.set_weights(layer.get_weights())
    assert clone.get_config() == layer.get_config()
    for a, b in zip(clone((x0, target)), (x, z)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-9)

    xi, ti = keras.Input((4,), dtype="float64"), keras.Input((5,), dtype="float64")
    model = keras.Model([xi, ti], list(layer((xi, ti))))
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    for a, b in zip(loaded([x0, target]), (x, z)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-9)

    def optimal_value():  # the inner loss at the joint optimum
        xs, zs = layer((x0, target))
        return tf.reduce_sum(_reconstruction(xs, zs, target))

    with tf.GradientTape() as tape:
        value = optimal_value()
    grads = tape.gradient(value, layer.trainable_variables)
    # envelope theorem: the gradient through z* at a fixed x* is that of the optimal value
    checks.check_variables_fd(layer.trainable_variables, grads, optimal_value, np.random.default_rng(7),
                              jointly=True)

    ki.export_saved_model(model, tmp_path / "export")
    reloaded = tf.saved_model.load(str(tmp_path / "export"))
    for a, b in zip(tf.nest.flatten(reloaded.serve(x0, target)), (x, z)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-9)
