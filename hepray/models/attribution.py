"""Which inputs (and pairs of inputs) a network relies on, from the Taylor expansion of its
output around each event (Wunsch et al., arXiv:1803.08782):

    f(x + Δ) ≈ f(x) + Σ_i t_i Δ_i + ½ Σ_{i,j} t_ij Δ_i Δ_j,
    t_i = ∂f/∂x_i,  t_ij = ∂²f/∂x_i∂x_j

The importance of a coefficient is its mean |t| over the events. Piecewise-linear networks
(ReLU) have zero second derivatives almost everywhere: use smooth activations (tanh, elu,
silu) when the second order matters. Inputs are whatever the model sees (usually standardised).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..extras import require

torch = require("torch")
Tensor = torch.Tensor


def taylor_coefficients(fn: Callable[[Tensor], Tensor], x: Tensor, second_order: bool = True,
                        batch_size: int = 4096) -> tuple[Tensor, Tensor | None]:
    """Per-event mean |t_i| [F] and mean |t_ij| [F, F] (upper triangle incl. diagonal, else 0).

    ``fn`` maps [B, F] to one output per event ([B] or [B, 1]); events must not interact
    (a model in eval mode). Derivatives by autograd: one backward pass per feature for t_ij.
    """
    n_feat = x.shape[1]
    first = torch.zeros(n_feat, dtype=torch.float64)
    second = torch.zeros(n_feat, n_feat, dtype=torch.float64) if second_order else None
    n_total = 0
    for start in range(0, x.shape[0], batch_size):
        xb = x[start:start + batch_size].detach().clone().requires_grad_(True)
        out = fn(xb).reshape(xb.shape[0], -1)
        if out.shape[1] != 1:
            raise ValueError(f"fn must return one value per event, got shape {tuple(out.shape)}")
        (grad,) = torch.autograd.grad(out.sum(), xb, create_graph=second_order)
        first += grad.detach().abs().sum(dim=0).double()
        if second is not None:
            for i in range(n_feat):
                if not grad.requires_grad:  # f is linear in x: no second-order terms
                    break
                (hess_row,) = torch.autograd.grad(grad[:, i].sum(), xb, retain_graph=True, allow_unused=True)
                if hess_row is None:
                    continue
                row = hess_row.detach().abs().sum(dim=0).double()
                second[i, i:] += row[i:]
        n_total += xb.shape[0]
    first /= max(n_total, 1)
    if second is not None:
        second /= max(n_total, 1)
    return first, second


def taylor_attribution(model: Callable[[Tensor], Tensor], x: Tensor, feature_names: Sequence[str],
                       output_index: int = 0, second_order: bool = True, top: int | None = None,
                       batch_size: int = 4096) -> dict[str, list]:
    """Ranked importances: ``{"first": [[name, <|t_i|>], ...], "second": [[name_i, name_j, <|t_ij|>], ...]}``.

    Sorted by decreasing value; ``top`` keeps the first entries of each list. For a model with
    several outputs ``output_index`` picks the one explained. The result is JSON-able.
    """
    names = list(feature_names)
    if len(names) != x.shape[1]:
        raise ValueError(f"{len(names)} feature names for {x.shape[1]} input columns")
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()  # batch-norm/dropout must not couple events or add noise

    def fn(xb: Tensor) -> Tensor:
        out = model(xb)
        return out.reshape(xb.shape[0], -1)[:, output_index]

    try:
        first, second = taylor_coefficients(fn, x, second_order, batch_size)
    finally:
        if was_training:
            model.train()
    ranked_first = sorted(([n, float(v)] for n, v in zip(names, first.tolist())), key=lambda t: -t[1])
    result: dict[str, list] = {"first": ranked_first[:top] if top else ranked_first}
    if second is not None:
        pairs = [[names[i], names[j], float(second[i, j])]
                 for i in range(len(names)) for j in range(i, len(names))]
        pairs.sort(key=lambda t: -t[2])
        result["second"] = pairs[:top] if top else pairs
    return result
