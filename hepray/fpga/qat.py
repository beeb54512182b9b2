"""Quantization-aware training (QAT) of a small trigger MLP for an ``ap_fixed<W,I>`` firmware.

Why not brevitas: hls4ml 1.3's PyTorch frontend does not ingest brevitas models (its docs send
them through an ONNX/QONNX export), and an exported graph would have to be re-imported with a
different frontend than the one the rest of this stage uses. The fake quantization here
instead reproduces hls4ml's arithmetic for ``Linear``+``ReLU`` networks with the types
:func:`hepray.fpga.hls.hls_config` sets, step for step:

- the input is cast to the input type (``input_1`` result type);
- weights and biases are cast to their types; products and the sum are exact (hls4ml's
  ``accum: auto`` is wide enough);
- the sum is cast to the layer's result type, with that type's rounding and overflow modes;
- ReLU keeps the result type (a no-op on the grid).

The cast is ``x + (q(x) - x).detach()``: the forward pass sees the grid value, the backward
pass the identity (the straight-through estimator), zeroed where a saturating type clips. After
training, weights and biases are snapped to the grid, so hls4ml writes them exactly and the C
simulation of the converted network equals :func:`quantized_forward` in float64 bit for bit.
Use a saturating type (``ap_fixed<8,3,AP_RND,AP_SAT>``) for QAT: wrap-around has no useful
gradient.
"""

from __future__ import annotations

import numpy as np

from ..extras import require
from .fixed import FixedType


def _torch():
    return require("torch")


def fake_quant(x, t: FixedType | str):
    """``ap_fixed`` cast in torch with a straight-through gradient (clipped for SAT types)."""
    torch = _torch()
    t = FixedType.parse(t)
    lsb = t.lsb
    k = x / lsb
    mode = t.rounding
    if mode == "AP_TRN":
        r = torch.floor(k)
    elif mode == "AP_TRN_ZERO":
        r = torch.trunc(k)
    elif mode == "AP_RND":
        r = torch.floor(k + 0.5)
    elif mode == "AP_RND_ZERO":
        r = torch.sign(k) * torch.ceil(torch.abs(k) - 0.5)
    elif mode == "AP_RND_MIN_INF":
        r = torch.ceil(k - 0.5)
    elif mode == "AP_RND_INF":
        r = torch.sign(k) * torch.floor(torch.abs(k) + 0.5)
    else:  # AP_RND_CONV
        r = torch.round(k)
    lo, hi = t.min / lsb, t.max / lsb
    inside = None
    if t.overflow in ("AP_SAT", "AP_SAT_SYM"):
        low = -hi if (t.overflow == "AP_SAT_SYM" and t.signed) else lo
        inside = (r >= low) & (r <= hi)
        r = torch.clamp(r, low, hi)
    elif t.overflow == "AP_SAT_ZERO":
        inside = (r >= lo) & (r <= hi)
        r = torch.where(inside, r, torch.zeros_like(r))
    else:  # AP_WRAP
        span = 2.0 ** t.width
        r = torch.remainder(r - lo, span) + lo
    q = r * lsb
    if inside is None:
        return x + (q - x).detach()
    return torch.where(inside, x + (q - x).detach(), q.detach())


def quantized_forward(model, x, precision: FixedType | str, layer_types: dict | None = None):
    """Forward pass of a ``hepray.models.mlp.MLP`` with hls4ml's casts (see module docstring).

    ``layer_types`` maps a ``Linear`` index in the Sequential to a type for its weights, bias and
    result, as per-layer ``precision`` overrides do in the conversion. Run in float64 for
    bit-exact comparisons with the C simulation; float32 is fine for training.
    """
    torch = _torch()
    nn = torch.nn
    t = FixedType.parse(precision)
    layer_types = {int(k): FixedType.parse(v) for k, v in (layer_types or {}).items()}
    h = fake_quant(x, t)
    current = t
    for i, layer in enumerate(model):
        if isinstance(layer, nn.Linear):
            lt = layer_types.get(i, t)
            w = fake_quant(layer.weight.to(h.dtype), lt)
            b = fake_quant(layer.bias.to(h.dtype), lt)
            h = fake_quant(h @ w.T + b, lt)
            current = lt
        elif isinstance(layer, nn.ReLU):
            h = fake_quant(torch.relu(h), current)
        elif isinstance(layer, nn.Dropout):
            h = layer(h)
        else:
            raise ValueError(f"QAT supports Linear/ReLU/Dropout layers, found {type(layer).__name__}")
    return h


def snap_to_grid(model, precision: FixedType | str, layer_types: dict | None = None):
    """Replace weights and biases by their grid values (in place); returns the model."""
    torch = _torch()
    t = FixedType.parse(precision)
    layer_types = {int(k): FixedType.parse(v) for k, v in (layer_types or {}).items()}
    with torch.no_grad():
        for i, layer in enumerate(model):
            if isinstance(layer, torch.nn.Linear):
                lt = layer_types.get(i, t)
                layer.weight.copy_(torch.from_numpy(lt.quantize(layer.weight.double().numpy())).to(layer.weight.dtype))
                layer.bias.copy_(torch.from_numpy(lt.quantize(layer.bias.double().numpy())).to(layer.bias.dtype))
    return model


def train_trigger_mlp(X: np.ndarray, y: np.ndarray, hidden: list[int], n_classes: int = 2, *,
                      precision: str | None = None, epochs: int = 30, lr: float = 3e-3, batch_size: int = 256,
                      weight_decay: float = 0.0, seed: int = 0, warmup_epochs: int = 0):
    """Train ``MLP(n_features, hidden, n_out)`` on standardised ``X`` and integer labels ``y``.

    ``precision=None`` trains in float; a type string trains with fake quantization (QAT) in
    the forward pass after ``warmup_epochs`` float epochs, then snaps weights to the grid.
    Binary (``n_classes=2``) has one logit output and BCE loss; otherwise softmax cross-entropy.
    Returns ``(model, history)``; the model is in eval mode.
    """
    torch = _torch()
    from ..models.mlp import MLP

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    n_out = 1 if n_classes == 2 else n_classes
    model = MLP(X.shape[1], list(hidden), n_out)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    Xt = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
    yt = torch.from_numpy(np.asarray(y))
    loss_fn = torch.nn.BCEWithLogitsLoss() if n_out == 1 else torch.nn.CrossEntropyLoss()
    history = []
    for epoch in range(epochs):
        model.train()
        order = rng.permutation(len(Xt))
        total = 0.0
        quantize = precision is not None and epoch >= warmup_epochs
        for start in range(0, len(order), batch_size):
            idx = torch.from_numpy(order[start:start + batch_size])
            xb, yb = Xt[idx], yt[idx]
            out = quantized_forward(model, xb, precision) if quantize else model(xb)
            loss = loss_fn(out[:, 0], yb.float()) if n_out == 1 else loss_fn(out, yb.long())
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        history.append({"epoch": epoch, "loss": total / len(Xt), "quantized": quantize})
    if precision is not None:
        snap_to_grid(model, precision)
    return model.eval(), history
