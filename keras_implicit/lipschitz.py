"""Lipschitz certificates of equilibrium layers and exact LBEN reparameterizations.

`certificate_matrix(layer)` is the Schur complement of the LBEN LMI,

    C = 2 Lambda - Lambda W - W^T Lambda - (W_o^T W_o + Lambda U U^T Lambda) / gamma,

and `lmi_margin(layer) = lambda_min(C)`: `C >= 0` proves that the layer is
`gamma`-Lipschitz from input to output (Revay, Wang & Manchester 2020,
Theorem 2). A parameterized `LipschitzDense` has `C = 2 (V^T V + m I)`.

`to_lben(layers)` writes a stack of explicit 1-Lipschitz layers (SLL, CPL,
AOL, Sandwich, convolutional SLL) and monDEQ layers as one LBEN with the
same bound (Havens, Araujo, Garg, Khorrami & Hu, NeurIPS 2023):

* the hidden state stacks the input and every layer's activations,
  `z = [z_0 = x; z_1; ...; z_D]`, with the identity on `z_0`;
* layer `k` reads `h_{k-1} = H_{k-1} z`, a linear function of the blocks
  before it, so `W` is block lower-triangular (plus monDEQ's own `W` on its
  diagonal block), `U = [I; 0; ...]` and the output is `y = h_D = G z`;
* each layer's certificate (`lben_block`: multiplier `lam_k`, bound
  `gamma_k`) telescopes: with `Gamma = prod gamma_k` and
  `c_k = prod_{j > k} gamma_j^2`, the multipliers `Lambda_0 = Gamma I`,
  `Lambda_k = (c_k / Gamma) diag(lam_k)` make `C >= 0` with bound `Gamma`;
* `M = Lambda (I - W) - (G^T G + Lambda U U^T Lambda) / (2 Gamma)` then has
  `sym(M) = C / 2 >= 0`, so `V = sym(M)^(1/2)`, `S = -skew(M) / 2`,
  `psi = -log(lambda)` and `m = 0` reproduce `W` exactly in
  `LipschitzDense`'s parameterization.

A monDEQ layer `z = relu(W z + U h + b)` with `m' = lambda_min(sym(I - W))`
enters with `gamma_k = ||U||_2 / m'` and `lam_k = 1 / m'`.
"""

import keras
import numpy as np
import tensorflow as tf

from keras_implicit.layers.explicit import _ExplicitLayer, linear_matrix
from keras_implicit.layers.lipschitz import LipschitzConv2D, LipschitzDense
from keras_implicit.layers.monotone import MonotoneDense


def _dense_parts(layer):
    """`(W, U, W_o, lambda, gamma)` of an LBEN layer as float64 arrays (flattened states)."""
    if not layer.built:
        raise ValueError(f"`layer` must be built (called once) first. Received: layer={layer.name!r}")
    cell = layer.cell
    dtype = cell.compute_dtype
    w = cell.implicit_weight().numpy().astype(np.float64)
    n = w.shape[0]
    lam = 1.0 / np.reshape(cell.metric_diagonal().numpy().astype(np.float64), [-1])
    if isinstance(layer, LipschitzConv2D):
        h, wd = cell.spatial
        c_in = int(cell.kernel.shape[2])
        n_in = h * wd * c_in

        def inject(flat):
            x = tf.reshape(flat, [-1, h, wd, c_in])
            return cell._flat(cell.input_injection(x) - cell.bias)

        u = linear_matrix(inject, n_in, dtype)
        w_o = linear_matrix(lambda z: cell.output(cell._unflat(z, None)) - cell.output_bias, n, dtype)
    else:
        u = cell.kernel.numpy().astype(np.float64).T
        w_o = cell.output_kernel.numpy().astype(np.float64).T
    return w, u, w_o, lam, cell.lipschitz


def certificate_matrix(layer):
    """`2 Lambda - Lambda W - W^T Lambda - (W_o^T W_o + Lambda U U^T Lambda) / gamma` (float64).

    Args:
        layer: a built `LipschitzDense` or `LipschitzConv2D` (the dense form
            of a convolutional layer has `H W filters` rows: small images).
    """
    if not isinstance(layer, (LipschitzDense, LipschitzConv2D)):
        raise ValueError(
            f"`layer` must be a LipschitzDense or LipschitzConv2D layer. Received: layer={layer!r}"
        )
    w, u, w_o, lam, gamma = _dense_parts(layer)
    lw = lam[:, None] * w
    lu = lam[:, None] * u
    c = 2.0 * np.diag(lam) - lw - lw.T - (w_o.T @ w_o + lu @ lu.T) / gamma
    return 0.5 * (c + c.T)


def lmi_margin(layer):
    """`lambda_min` of `certificate_matrix(layer)`: `>= 0` certifies the Lipschitz bound.

    Example:

    >>> import numpy as np, keras_implicit as ki
    >>> layer = ki.layers.LipschitzDense(8, 3, lipschitz=0.5, m=0.25, dtype="float64")
    >>> _ = layer(np.zeros((1, 5)))
    >>> ki.lipschitz.lmi_margin(layer) >= 2 * 0.25 - 1e-9   # = 2 lambda_min(V^T V + m I)
    True
    """
    return float(np.linalg.eigvalsh(certificate_matrix(layer))[0])


def lipschitz_bound(layer):
    """A certified Lipschitz bound of a layer (2-norm, input to output).

    `LipschitzDense` / `LipschitzConv2D`: `gamma`; `MonotoneDense`:
    `||U||_2 / lambda_min(sym(I - W))`; the explicit layers: 1; a Keras
    `Dense` layer: `||kernel||_2`.
    """
    if isinstance(layer, (LipschitzDense, LipschitzConv2D)):
        return layer.lipschitz
    if isinstance(layer, MonotoneDense):
        return _mondeq_gamma(layer)[0]
    if isinstance(layer, _ExplicitLayer):
        return layer.lipschitz
    if isinstance(layer, keras.layers.Dense):
        return float(np.linalg.norm(layer.kernel.numpy().astype(np.float64), 2))
    raise ValueError(
        "lipschitz_bound knows LipschitzDense, LipschitzConv2D, MonotoneDense, the explicit "
        f"1-Lipschitz layers and Dense. Received: layer={layer!r}"
    )


def _mondeq_gamma(layer):
    w = layer.implicit_weight().numpy().astype(np.float64)
    i_w = np.eye(w.shape[0]) - w
    m = float(np.linalg.eigvalsh(0.5 * (i_w + i_w.T))[0])
    u = layer.cell.kernel.numpy().astype(np.float64).T
    return float(np.linalg.norm(u, 2) / m), m, w, u


def _mondeq_block(layer):
    if layer.cell.activation.name != "relu":
        raise ValueError(
            f"to_lben supports relu monDEQ layers. Received: activation={layer.cell.activation.name!r}"
        )
    gamma, m, w, u = _mondeq_gamma(layer)
    p = w.shape[0]
    return {"W_in": u, "b": layer.cell.bias.numpy().astype(np.float64), "G": np.eye(p),
            "lam": np.full(p, 1.0 / m), "R": None, "activation": "relu", "gamma": gamma, "W_self": w}


def _flatten_layers(model_or_layers):
    if isinstance(model_or_layers, keras.Model):
        layers = [l for l in model_or_layers.layers if not isinstance(l, keras.layers.InputLayer)]
    elif isinstance(model_or_layers, (list, tuple)):
        layers = list(model_or_layers)
    else:
        layers = [model_or_layers]
    if not layers:
        raise ValueError(f"to_lben needs at least one layer. Received: {model_or_layers!r}")
    for layer in layers:
        if not isinstance(layer, (_ExplicitLayer, MonotoneDense)):
            raise ValueError(
                "to_lben converts SLLDense, SLLConv2D, CPLDense, AOLDense, SandwichDense and "
                f"MonotoneDense layers. Received: layer={layer!r}"
            )
        if not layer.built:
            raise ValueError(f"Every layer must be built (called once) first. Received: layer={layer.name!r}")
    return layers


def _input_dim(layer):
    if isinstance(layer, MonotoneDense):
        return int(layer.cell.kernel.shape[0])
    return layer.input_dim


def lben_structure(model_or_layers):
    """The LBEN of a layer stack as float64 arrays (see the module docstring).

    Returns a dict with `W [N, N]`, `U [N, n]`, `b [N]`, `G [p, N]`,
    `lam [N]`, `gamma`, `identity [N]` (bool: units with the identity) and
    `mask [N, N]` (1 where the construction puts a nonzero block of `W`).
    """
    layers = _flatten_layers(model_or_layers)
    n0 = _input_dim(layers[0])
    blocks = []
    width = n0
    for layer in layers:
        n_in = _input_dim(layer)
        if n_in != width:
            raise ValueError(
                f"Layer {layer.name!r} takes {n_in} inputs but the layer before it gives {width}. "
                f"Received: mismatched shapes {width} -> {n_in}"
            )
        block = _mondeq_block(layer) if isinstance(layer, MonotoneDense) else layer.lben_block(n_in)
        blocks.append(block)
        width = block["G"].shape[0]
    sizes = [n0] + [blk["W_in"].shape[0] for blk in blocks]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    total = int(offsets[-1])
    gammas = [blk["gamma"] for blk in blocks]
    big_gamma = float(np.prod(gammas))
    w = np.zeros((total, total))
    mask = np.zeros((total, total))
    b = np.zeros(total)
    lam = np.zeros(total)
    identity = np.zeros(total, bool)
    identity[:n0] = True
    lam[:n0] = big_gamma
    h = np.zeros((n0, total))
    h[:, :n0] = np.eye(n0)  # h_0 = z_0
    for k, blk in enumerate(blocks, start=1):
        lo, hi = offsets[k], offsets[k + 1]
        rows = blk["W_in"] @ h
        w[lo:hi] = rows
        mask[lo:hi, :lo] = 1.0
        if blk["W_self"] is not None:
            w[lo:hi, lo:hi] = blk["W_self"]
            mask[lo:hi, lo:hi] = 1.0
        b[lo:hi] = blk["b"]
        c_k = float(np.prod([g**2 for g in gammas[k:]]))
        lam[lo:hi] = c_k / big_gamma * blk["lam"]
        identity[lo:hi] = blk["activation"] == "identity"
        h_next = np.zeros((blk["G"].shape[0], total))
        if blk["R"] is not None:
            h_next += blk["R"] @ h
        h_next[:, lo:hi] += blk["G"]
        h = h_next
    u = np.zeros((total, n0))
    u[:n0] = np.eye(n0)
    return {"W": w, "U": u, "b": b, "G": h, "lam": lam, "gamma": big_gamma, "identity": identity,
            "mask": mask}


def to_lben(model_or_layers, structure_penalty=0.0, **layer_kwargs):
    """One `LipschitzDense` equal to a stack of 1-Lipschitz / monDEQ layers.

    Args:
        model_or_layers: a built Keras model (its layers in order) or a list
            of built layers: `SLLDense`, `SLLConv2D`, `CPLDense`,
            `AOLDense`, `SandwichDense`, `MonotoneDense`. Convolutional
            layers are written on flattened images (row-major H, W, C).
        structure_penalty: L1 weight on the entries of `W` outside the
            explicit structure during fine-tuning (see `LipschitzDense`).
        **layer_kwargs: passed to `LipschitzDense` (e.g. `solver`, `tol`,
            `max_iter`); defaults: Peaceman-Rachford, tol 1e-10 in float64
            (1e-6 otherwise), the dtype of the first layer.

    Returns:
        A built `LipschitzDense` with `lipschitz` = the product of the
        layers' bounds (1 for the explicit layers), `m = 0`, whose output
        equals the stack's output (on flattened inputs). Hidden units are
        ordered with the identity units first (the input copy and any linear
        AOL blocks).

    Example:

    >>> import numpy as np, keras, keras_implicit as ki
    >>> net = keras.Sequential([keras.Input((6,)), ki.layers.SLLDense(8, dtype="float64"),
    ...                         ki.layers.SLLDense(8, dtype="float64")])
    >>> lben = ki.lipschitz.to_lben(net)
    >>> x = np.random.default_rng(0).normal(size=(4, 6))
    >>> bool(np.allclose(lben(x), net(x), atol=1e-8))
    True
    """
    layers = _flatten_layers(model_or_layers)
    st = lben_structure(layers)
    order = np.concatenate([np.flatnonzero(st["identity"]), np.flatnonzero(~st["identity"])])
    w = st["W"][np.ix_(order, order)]
    mask = st["mask"][np.ix_(order, order)]
    u, b, g, lam = st["U"][order], st["b"][order], st["G"][:, order], st["lam"][order]
    gamma = st["gamma"]
    n_id = int(st["identity"].sum())
    total = w.shape[0]
    lu = lam[:, None] * u
    m_mat = lam[:, None] * (np.eye(total) - w) - (g.T @ g + lu @ lu.T) / (2.0 * gamma)
    sym = 0.5 * (m_mat + m_mat.T)
    skew = 0.5 * (m_mat - m_mat.T)
    evals, evecs = np.linalg.eigh(sym)
    if evals[0] < -1e-8 * max(1.0, abs(evals[-1])):
        raise ValueError(
            "The layers' certificate does not hold (sym(M) has eigenvalue "
            f"{evals[0]:.3g} < 0). Received: layers={[l.name for l in layers]}"
        )
    v = (evecs * np.sqrt(np.clip(evals, 0.0, None))) @ evecs.T  # symmetric square root
    s = -0.5 * skew
    dtype = layer_kwargs.pop("dtype", layers[0].dtype_policy.variable_dtype if hasattr(layers[0], "dtype_policy")
                             else "float32")
    defaults = {"solver": "peaceman_rachford", "tol": 1e-10 if dtype == "float64" else 1e-6, "max_iter": 500,
                "stop_mode": "abs", "on_failure": "warn"}
    defaults.update(layer_kwargs)
    layer = LipschitzDense(total, g.shape[0], lipschitz=gamma, m=0.0, metric="diagonal",
                           identity_units=n_id, structure_mask=mask, structure_penalty=structure_penalty,
                           dtype=dtype, **defaults)
    layer.build((None, u.shape[1]))
    cell = layer.cell
    cell.V.assign(v.astype(dtype))
    cell.S.assign(s.astype(dtype))
    cell.kernel.assign(u.T.astype(dtype))
    cell.bias.assign(b.astype(dtype))
    cell.output_kernel.assign(g.T.astype(dtype))
    cell.output_bias.assign(np.zeros(g.shape[0], dtype))
    cell.psi.assign((-np.log(lam)).astype(dtype))
    return layer


__all__ = ["certificate_matrix", "lben_structure", "lipschitz_bound", "lmi_margin", "to_lben"]
