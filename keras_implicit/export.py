"""SavedModel export with forward/backward endpoints for every FPI layer."""

import contextlib

import keras
import tensorflow as tf

from keras_implicit.layers.fpi import BackwardFPI, ForwardFPI


def fpi_layers(model):
    """The `ForwardFPI` and `BackwardFPI` layers of a model, outermost first."""
    return [
        layer
        for layer in model._flatten_layers(include_self=False)
        if isinstance(layer, (ForwardFPI, BackwardFPI))
    ]


@contextlib.contextmanager
def _metrics_off(layers):
    """Exported graphs must not update training metrics."""
    saved = [(layer, getattr(layer, "track_metrics", None)) for layer in layers]
    try:
        for layer, _ in saved:
            if hasattr(layer, "track_metrics"):
                layer.track_metrics = False
        yield
    finally:
        for layer, value in saved:
            if value is not None:
                layer.track_metrics = value


def _spec(shape, dtype):
    return tf.TensorSpec((None,) + tuple(shape[1:]), dtype)


def _forward_endpoint(layer):
    x_spec = _spec(layer.input_shape_for_export, layer.compute_dtype)

    def forward(x):
        z, info = layer.solve(x)
        return {"z_star": z, "iterations": info.iterations, "residual": info.residual}

    return forward, [x_spec]


def _backward_endpoint(layer):
    if isinstance(layer, BackwardFPI):
        node = layer
        x_shape, z_shape, _ = layer.input_shape_for_export
    else:
        node = layer.backward_layer()
        x_shape, z_shape = layer.input_shape_for_export, (None,) + layer.state_shape
    dtype = layer.compute_dtype
    specs = [_spec(x_shape, dtype), _spec(z_shape, dtype), _spec(z_shape, dtype)]

    def backward(x, z_star, dz):
        c, dx, info = node.solve(x, z_star, dz)
        return {"adjoint": c, "input_gradient": dx, "iterations": info.iterations}

    return backward, specs


def export_saved_model(model, path, verbose=False):
    """Writes a SavedModel that serves `model` with TensorFlow alone.

    Signatures:

    * `serve` (also `serving_default`): the model's forward pass.
    * `<layer>_forward` for every `ForwardFPI`: the layer's input ->
      `z_star`, `iterations`, `residual`.
    * `<layer>_backward` for every FPI layer: `(x, z_star, dz)` ->
      `adjoint` (c solving `c = (d cell/dz)^T c + dz`), `input_gradient`
      (`(d cell/dx)^T c`), `iterations`.

    Custom gradients are kept, so `tf.GradientTape` through the reloaded
    `serve` gives the live model's gradients. The export does not update
    the layers' training metrics.

    Args:
        model: a built Keras model.
        path: output directory.
        verbose: print Keras' export summary.

    Returns:
        The list of endpoint names.

    Example:

    >>> import keras, keras_implicit as ki, tempfile
    >>> inputs = keras.Input((8,))
    >>> z = ki.layers.ForwardFPI(ki.layers.DenseCell(4), name="fpi")(inputs)
    >>> model = keras.Model(inputs, z)
    >>> ki.export_saved_model(model, tempfile.mkdtemp())
    ['serve', 'fpi_forward', 'fpi_backward']
    """
    if not model.built:
        raise ValueError(
            "Build the model before exporting it (call it on data or use Input). "
            f"Received: model={model.name!r} with built=False"
        )
    inputs = model.inputs if getattr(model, "inputs", None) else None
    if not inputs:
        raise ValueError(
            "export_saved_model needs a model with known inputs (functional or "
            f"Sequential with an Input). Received: model={model.name!r}"
        )
    layers = fpi_layers(model)
    archive = keras.export.ExportArchive()
    archive.track(model)
    specs = [tf.TensorSpec(t.shape, t.dtype) for t in inputs]
    names = ["serve"]
    with _metrics_off(layers):
        if len(specs) == 1:
            archive.add_endpoint("serve", lambda x: model(x, training=False), input_signature=specs)
        else:
            archive.add_endpoint("serve", lambda *xs: model(list(xs), training=False), input_signature=specs)
        for layer in layers:
            if isinstance(layer, ForwardFPI):
                fn, sig = _forward_endpoint(layer)
                archive.add_endpoint(f"{layer.name}_forward", fn, input_signature=sig)
                names.append(f"{layer.name}_forward")
            fn, sig = _backward_endpoint(layer)
            archive.add_endpoint(f"{layer.name}_backward", fn, input_signature=sig)
            names.append(f"{layer.name}_backward")
        archive.write_out(str(path), verbose=verbose)
    return names
