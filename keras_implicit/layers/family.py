"""The base of the model-family layers: a `ForwardFPI` that builds its own cell."""

from keras_implicit.layers.fpi import ForwardFPI
from keras_implicit.layers.precision import float32_under_half


class EquilibriumFamily(ForwardFPI):
    """A `ForwardFPI` whose cell is built from the layer's own arguments.

    A family (monDEQ, LBEN, FPI_NN, ...) declares `cell_class` and passes the
    cell's arguments as a dict; the solve settings are `ForwardFPI`'s,
    declared once there (a family's signature lists the ones whose defaults
    it changes and passes the others on). The output goes through the
    `readout` hook. The config lists the cell's arguments flat, next to the
    solve settings (no nested `cell`), so `cls(**config)` rebuilds the layer
    and a tuner can set every argument.

    Under a mixed-precision policy (`mixed_float16`, `mixed_bfloat16`) a
    family whose cell sets `needs_float32 = True` computes in float32: its
    dtype policy is `"float32"` and its output float32 (Keras' advice for
    numerically sensitive layers); the layers around it keep the mixed
    policy. The others compute in the policy's half precision, with the
    solver's arithmetic (iterates, least squares, residuals) in float32.

    Args:
        cell_arguments: dict of the cell's constructor arguments.
        **kwargs: `ForwardFPI`'s solve settings and Keras layer arguments.
    """

    cell_class = None
    cell_name = None

    def __init__(self, cell_arguments, **kwargs):
        kwargs.pop("cell", None)  # a config's own entry: the cell is rebuilt here
        kwargs["dtype"] = float32_under_half(getattr(self.cell_class, "needs_float32", False), kwargs.get("dtype"))
        cell = self.cell_class(**cell_arguments, name=self.cell_name, dtype=kwargs.get("dtype"))
        super().__init__(cell, **kwargs)
        self.cell_arguments = tuple(cell_arguments)

    def get_config(self):
        config = super().get_config()
        del config["cell"]
        cell_config = self.cell.get_config()
        return {**config, **{k: cell_config[k] for k in self.cell_arguments}}
