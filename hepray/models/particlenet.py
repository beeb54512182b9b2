"""ParticleNet (Qu & Gouskos, arXiv:1902.08570) in plain torch, following weaver-core's layout.

Inputs use the weaver convention: ``points`` [B, 2, P] (Δη, Δφ), ``features`` [B, C, P] and
``mask`` [B, 1, P] (1 = real particle). Padded particles are zeroed and pushed out of every
neighbourhood, so in eval mode the output depends only on the real particles, in any order.
"""

from __future__ import annotations

from ..extras import require

torch = require("torch")
nn = torch.nn
Tensor = torch.Tensor

PRESETS: dict[str, dict] = {
    "lite": {"conv_params": [[7, [32, 32, 32]], [7, [64, 64, 64]]], "fc_params": [[128, 0.1]]},
    "full": {
        "conv_params": [[16, [64, 64, 64]], [16, [128, 128, 128]], [16, [256, 256, 256]]],
        "fc_params": [[256, 0.1]],
    },
}

_FAR = 1e9  # distance given to padded neighbours: picked only when a jet has < k+1 real particles


def knn(points: Tensor, k: int, mask: Tensor) -> Tensor:
    """Indices [B, P, k] of each particle's k nearest real neighbours (itself excluded).

    One batched distance matrix + ``topk``. Squared distances come from one matmul, as
    ``torch.cdist`` computes them, but written out so the graph exports to ONNX (cdist does not).
    Padded columns get a constant far distance (ties among them are harmless: their features
    are zero) and the diagonal is pushed beyond them.
    """
    sq = points.pow(2).sum(dim=1)  # [B, P]
    dist = sq.unsqueeze(2) + sq.unsqueeze(1) - 2.0 * torch.bmm(points.transpose(1, 2), points)
    valid = mask[:, 0, :].unsqueeze(1) > 0  # [B, 1, P]: is column j a real particle
    dist = torch.where(valid, dist, torch.full_like(dist, _FAR))
    pos = torch.arange(dist.shape[-1], device=dist.device)
    dist = dist.masked_fill(pos.unsqueeze(0) == pos.unsqueeze(1), 2 * _FAR)
    return dist.topk(k, dim=-1, largest=False).indices


def gather_neighbours(features: Tensor, idx: Tensor) -> Tensor:
    """``features`` [B, C, P], ``idx`` [B, P, k] -> neighbour features [B, C, P, k].

    Rows of a [B*P, C] view are indexed (weaver-core's layout): contiguous rows per neighbour,
    10-20% faster in training on CPU than ``gather`` along P with an index expanded over C."""
    b, c, p = features.shape
    k = idx.shape[-1]
    flat = (idx + torch.arange(b, device=idx.device).view(-1, 1, 1) * p).reshape(-1)
    rows = features.transpose(1, 2).reshape(b * p, c)[flat]
    return rows.view(b, p, k, c).permute(0, 3, 1, 2).contiguous()


class EdgeConvBlock(nn.Module):
    """EdgeConv: MLP on (x_i, x_j - x_i) over the k nearest neighbours, mean, plus a shortcut."""

    def __init__(self, k: int, in_feat: int, out_feats: list[int]):
        super().__init__()
        self.k = k
        layers: list[nn.Module] = []
        width = 2 * in_feat
        for out in out_feats:
            layers += [nn.Conv2d(width, out, kernel_size=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
            width = out
        self.convs = nn.Sequential(*layers)
        if in_feat == out_feats[-1]:
            self.sc = None
        else:
            self.sc = nn.Sequential(nn.Conv1d(in_feat, out_feats[-1], kernel_size=1, bias=False),
                                    nn.BatchNorm1d(out_feats[-1]))
        self.act = nn.ReLU()

    def forward(self, points: Tensor, features: Tensor, mask: Tensor) -> Tensor:
        k = self.k
        if not torch.jit.is_tracing() and features.shape[-1] <= k:
            k = features.shape[-1] - 1  # tiny inputs: at most P-1 neighbours exist
        idx = knn(points, k, mask)
        nbr = gather_neighbours(features, idx)  # [B, C, P, k]
        centre = features.unsqueeze(-1).expand_as(nbr)
        x = self.convs(torch.cat([centre, nbr - centre], dim=1)).mean(dim=-1)  # [B, C_out, P]
        sc = features if self.sc is None else self.sc(features)
        return self.act(sc + x)


class ParticleNet(nn.Module):
    """``ParticleNet(input_dims=C, num_classes=2)`` (Lite); ``size="full"`` for the paper's net.

    ``conv_params`` [[k, [c1, c2, c3]], ...] and ``fc_params`` [[width, dropout], ...] override
    the preset. ``global_dims`` > 0 adds a ``globals`` input [B, G] (jet-level variables,
    standardised like the features) joined to the pooled particle features before the FC layers.
    Returns logits [B, num_classes]; ``penultimate`` gives the last FC hidden layer.
    """

    def __init__(self, input_dims: int, num_classes: int, size: str = "lite",
                 conv_params: list | None = None, fc_params: list | None = None,
                 use_fusion: bool = True, use_fts_bn: bool = True, use_counts: bool = True, global_dims: int = 0):
        super().__init__()
        if size not in PRESETS:
            raise ValueError(f"size must be one of {sorted(PRESETS)}, got {size!r}")
        conv_params = [[int(k), [int(c) for c in ch]] for k, ch in (conv_params or PRESETS[size]["conv_params"])]
        fc_params = [[int(w), float(d)] for w, d in (fc_params or PRESETS[size]["fc_params"])]
        self.arch = {"name": "particlenet", "input_dims": input_dims, "num_classes": num_classes,
                     "size": size, "conv_params": conv_params, "fc_params": fc_params,
                     "use_fusion": use_fusion, "use_fts_bn": use_fts_bn, "use_counts": use_counts,
                     "global_dims": int(global_dims)}
        self.use_counts = use_counts
        self.bn_fts = nn.BatchNorm1d(input_dims) if use_fts_bn else None
        self.edge_convs = nn.ModuleList()
        width = input_dims
        for k, channels in conv_params:
            self.edge_convs.append(EdgeConvBlock(k, width, channels))
            width = channels[-1]
        self.fusion = None
        if use_fusion:
            in_chn = sum(ch[-1] for _, ch in conv_params)
            out_chn = min(max((in_chn // 128) * 128, 128), 1024)  # weaver's fusion width rule
            self.fusion = nn.Sequential(nn.Conv1d(in_chn, out_chn, kernel_size=1, bias=False),
                                        nn.BatchNorm1d(out_chn), nn.ReLU())
            width = out_chn
        self.global_dims = int(global_dims)
        width += self.global_dims
        hidden: list[nn.Module] = []
        for w, drop in fc_params:
            hidden += [nn.Linear(width, w), nn.ReLU(), nn.Dropout(drop)]
            width = w
        self.fc_hidden = nn.Sequential(*hidden)
        self.fc_out = nn.Linear(width, num_classes)

    def _pooled(self, points: Tensor, features: Tensor, mask: Tensor | None) -> Tensor:
        if mask is None:  # weaver's fallback: a particle with all-zero features is padding
            mask = features.abs().sum(dim=1, keepdim=True) != 0
        mask = mask.to(features.dtype)
        points = points * mask
        features = features * mask
        fts = self.bn_fts(features) * mask if self.bn_fts is not None else features
        outputs = []
        for i, conv in enumerate(self.edge_convs):
            fts = conv(points if i == 0 else fts, fts, mask) * mask
            outputs.append(fts)
        if self.fusion is not None:
            fts = self.fusion(torch.cat(outputs, dim=1)) * mask
        if self.use_counts:
            counts = mask.sum(dim=-1).clamp(min=1.0)  # [B, 1]: average over real particles only
            return fts.sum(dim=-1) / counts
        return fts.mean(dim=-1)

    def penultimate(self, points: Tensor, features: Tensor, mask: Tensor | None = None,
                    globals: Tensor | None = None) -> Tensor:
        pooled = self._pooled(points, features, mask)
        if self.global_dims:
            if globals is None:
                raise ValueError(f"this ParticleNet was built with global_dims={self.global_dims}: pass `globals`")
            pooled = torch.cat([pooled, globals.to(pooled.dtype)], dim=1)
        return self.fc_hidden(pooled)

    def forward(self, points: Tensor, features: Tensor, mask: Tensor | None = None,
                globals: Tensor | None = None) -> Tensor:
        return self.fc_out(self.penultimate(points, features, mask, globals))
