"""hepray.models: shapes, masks, invariances, exports, and that each model learns a small toy."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ak = pytest.importorskip("awkward")
from sklearn.metrics import roc_auc_score  # noqa: E402

from hepray.models import build_model  # noqa: E402
from hepray.models.attribution import taylor_attribution  # noqa: E402
from hepray.models.autoencoder import AutoEncoder, VariationalAutoEncoder  # noqa: E402
from hepray.models.flows import ConditionalFlow  # noqa: E402
from hepray.models.gan import ConditionalGAN, train_step  # noqa: E402
from hepray.models.jetgraph import JetGraphNet, delta_r, masked_bce_with_logits  # noqa: E402
from hepray.models.losses import Adversary, adnn_step, shape_penalty, soft_histogram  # noqa: E402
from hepray.models.mlp import MLP  # noqa: E402
from hepray.models.padding import apply_padding, fit_padding, parse_config, to_torch  # noqa: E402
from hepray.models.particlenet import ParticleNet, knn  # noqa: E402

F = torch.nn.functional


@pytest.fixture(autouse=True)
def _one_thread_and_seed():
    torch.set_num_threads(1)  # the machine is shared: keep tests on one core
    torch.manual_seed(0)


def _train(model, loss_fn, n_steps: int, lr: float = 3e-3):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for step in range(n_steps):
        loss = loss_fn(step)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return float(loss.detach())


# ---------------------------------------------------------------- architecture round trip

ARCHS = [
    {"name": "particlenet", "input_dims": 3, "num_classes": 2},
    {"name": "jetgraph", "n_features": 4, "hidden": 16, "n_layers": 2},
    {"name": "autoencoder", "n_inputs": 5, "hidden": [8], "latent": 2},
    {"name": "vae", "n_inputs": 5, "hidden": [8], "latent": 2},
    {"name": "conditional_flow", "n_features": 2, "n_context": 1, "n_layers": 2, "hidden": 8},
    {"name": "conditional_gan", "n_outputs": 2, "n_context": 1, "generator_hidden": [8], "discriminator_hidden": [8]},
    {"name": "adversary", "n_inputs": 4, "n_domains": 3},
]


def _inputs(arch: dict):
    name = arch["name"]
    if name == "particlenet":
        return (torch.randn(3, 2, 10), torch.randn(3, 3, 10), torch.ones(3, 1, 10))
    if name == "jetgraph":
        return (torch.randn(3, 5, 4), torch.ones(3, 5, dtype=torch.bool))
    if name in ("autoencoder", "vae"):
        return (torch.randn(3, 5),)
    if name == "conditional_flow":
        return (torch.randn(3, 2), torch.randn(3, 1))
    if name == "conditional_gan":
        return (torch.randn(3, 8), torch.randn(3, 1))
    return (torch.randn(3, 4),)


@pytest.mark.parametrize("arch", ARCHS, ids=[a["name"] for a in ARCHS])
def test_arch_dict_rebuilds_model_from_json_and_weights_only_state_dict(arch):
    model = build_model(arch)
    # perturb away from the zero-initialised layers so the comparison means something
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.eval()
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    rebuilt = build_model(json.loads(json.dumps(model.arch)))
    rebuilt.load_state_dict(torch.load(buf, weights_only=True))
    rebuilt.eval()
    args = _inputs(arch)
    if arch["name"] == "conditional_flow":
        a, b = model.log_prob(*args), rebuilt.log_prob(*args)
    else:
        a, b = model(*args), rebuilt(*args)
        a, b = (a[0], b[0]) if isinstance(a, tuple) else (a, b)
    torch.testing.assert_close(a, b)


# ---------------------------------------------------------------- ParticleNet

def _jets(n: int, n_max: int = 16, seed: int = 0):
    """Two classes of jets that differ only in the angular spread of their constituents."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    counts = torch.randint(6, n_max + 1, (n,), generator=g)
    spread = torch.where(y == 1, 0.3, 0.1)[:, None, None]
    points = torch.randn(n, 2, n_max, generator=g) * spread
    mask = (torch.arange(n_max)[None, :] < counts[:, None]).float()[:, None, :]
    features = torch.cat([torch.randn(n, 1, n_max, generator=g), points], dim=1)
    return points * mask, features * mask, mask, y


def test_knn_excludes_self_and_padding():
    points = torch.stack([torch.tensor([0.0, 1.0, 2.0, 0.1, 0.2]), torch.zeros(5)]).unsqueeze(0)
    mask = torch.tensor([[[1.0, 1.0, 1.0, 1.0, 0.0]]])  # the particle at 0.2 is padding
    idx = knn(points, 2, mask)[0]
    assert idx[0].tolist() == [3, 1]  # nearest real neighbours of x=0: 0.1 then 1.0, never itself/0.2
    assert idx[2].tolist() == [1, 3]


def test_particlenet_shapes_presets_and_penultimate():
    lite = ParticleNet(input_dims=3, num_classes=4)
    full = ParticleNet(input_dims=3, num_classes=4, size="full")
    assert [k for k, _ in full.arch["conv_params"]] == [16, 16, 16]
    assert full.arch["fc_params"] == [[256, 0.1]]
    assert sum(p.numel() for p in full.parameters()) > 5 * sum(p.numel() for p in lite.parameters())
    pts, fts, mask, _ = _jets(5, n_max=20)
    lite.eval()
    assert lite(pts, fts, mask).shape == (5, 4)
    assert lite.penultimate(pts, fts, mask).shape == (5, 128)
    with pytest.raises(ValueError, match="size"):
        ParticleNet(3, 2, size="huge")


def test_particlenet_permutation_and_padding_invariant():
    model = ParticleNet(input_dims=3, num_classes=2).eval()
    pts, fts, mask, _ = _jets(6, n_max=12)
    out = model(pts, fts, mask)
    perm = torch.randperm(12)
    torch.testing.assert_close(model(pts[..., perm], fts[..., perm], mask[..., perm]), out, atol=1e-5, rtol=1e-5)
    # 5 extra masked particles carrying garbage must not change anything
    pts2 = torch.cat([pts, 3 * torch.randn(6, 2, 5)], dim=-1)
    fts2 = torch.cat([fts, 3 * torch.randn(6, 3, 5)], dim=-1)
    mask2 = torch.cat([mask, torch.zeros(6, 1, 5)], dim=-1)
    torch.testing.assert_close(model(pts2, fts2, mask2), out, atol=1e-5, rtol=1e-5)
    # ... while changing a real particle does
    fts3 = fts.clone()
    fts3[:, 0, 0] += 1.0
    assert (model(pts, fts3, mask) - out).abs().max() > 1e-4


def test_particlenet_learns_constituent_spread():
    pts, fts, mask, y = _jets(1024)
    tpts, tfts, tmask, ty = _jets(512, seed=1)
    model = ParticleNet(input_dims=3, num_classes=2)
    order = torch.randperm(1024)

    def loss(step):
        b = order[(step % 8) * 128:(step % 8 + 1) * 128]
        return F.cross_entropy(model(pts[b], fts[b], mask[b]), y[b])

    _train(model, loss, n_steps=16)  # two epochs
    with torch.no_grad():
        score = model(tpts, tfts, tmask).softmax(-1)[:, 1]
    assert roc_auc_score(ty.numpy(), score.numpy()) > 0.9


# ---------------------------------------------------------------- jet graph

def _events(n: int, n_max: int = 6, seed: int = 0):
    """Jets pass "the tagger" iff another jet lies within ΔR < 1.2 (φ wraps around ±π)."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(2, n_max + 1, (n,), generator=g)
    mask = torch.arange(n_max)[None, :] < counts[:, None]
    eta = (torch.rand(n, n_max, generator=g) - 0.5) * 4.0
    phi = (torch.rand(n, n_max, generator=g) * 2 - 1) * math.pi
    pt = torch.randn(n, n_max, generator=g)
    flav = (torch.rand(n, n_max, generator=g) < 0.3).float()
    x = torch.stack([pt, eta, phi, flav], dim=-1) * mask[..., None]
    dr = delta_r(eta, phi).masked_fill(~(mask[:, None, :] & mask[:, :, None]), 99.0)
    dr = dr.masked_fill(torch.eye(n_max, dtype=torch.bool), 99.0)
    y = ((dr.amin(dim=-1) < 1.2) & mask).float()
    return x, mask, y


def test_delta_r_wraps_phi():
    eta = torch.tensor([[0.0, 0.0, 1.0]])
    phi = torch.tensor([[3.1, -3.1, 3.1]])
    dr = delta_r(eta, phi)[0]
    assert dr[0, 1] == pytest.approx(2 * math.pi - 6.2, abs=1e-5)
    assert dr[0, 2] == pytest.approx(1.0, abs=1e-5)
    assert dr[0, 0] == pytest.approx(0.0, abs=1e-5)


def test_jetgraph_equivariant_and_padding_invariant():
    model = JetGraphNet(n_features=4, hidden=16, n_layers=2).eval()
    x, mask, _ = _events(4)
    out = model(x, mask)
    assert out.shape == (4, 6, 1)
    assert (out[~mask] == 0).all()
    perm = torch.randperm(6)
    torch.testing.assert_close(model(x[:, perm], mask[:, perm]), out[:, perm], atol=1e-5, rtol=1e-5)
    x2 = torch.cat([x, torch.randn(4, 3, 4)], dim=1)
    mask2 = torch.cat([mask, torch.zeros(4, 3, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(model(x2, mask2)[:, :6], out, atol=1e-5, rtol=1e-5)
    for agg in ("mean", "max"):
        m = JetGraphNet(n_features=4, hidden=8, n_layers=1, aggregation=agg).eval()
        torch.testing.assert_close(m(x2, mask2)[:, :6], m(x, mask), atol=1e-5, rtol=1e-5)


def test_jetgraph_learns_neighbour_dependent_rule():
    x, mask, y = _events(2048)
    tx, tmask, ty = _events(1024, seed=1)
    assert 0.3 < float(y[mask].mean()) < 0.7
    model = JetGraphNet(n_features=4, hidden=24, n_layers=2)

    def loss(step):
        b = slice((step % 16) * 128, (step % 16 + 1) * 128)
        return masked_bce_with_logits(model(x[b], mask[b]), y[b], mask[b])

    _train(model, loss, n_steps=100)
    with torch.no_grad():
        logits = model(tx, tmask).squeeze(-1)
    acc = float(((logits > 0).float() == ty)[tmask].float().mean())
    assert acc > 0.9, acc


# ---------------------------------------------------------------- autoencoders

def _manifold(n: int, shift: float = 0.0, seed: int = 0):
    """8-D data on a 2-D linear manifold; anomalies are pushed off it along a fixed direction."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(2, 8, generator=torch.Generator().manual_seed(42))
    off = torch.randn(8, generator=torch.Generator().manual_seed(43))
    z = torch.randn(n, 2, generator=g)
    return z @ basis + 0.05 * torch.randn(n, 8, generator=g) + shift * off


@pytest.mark.parametrize("cls", [AutoEncoder, VariationalAutoEncoder])
def test_autoencoder_scores_anomalies_higher(cls):
    train = _manifold(2048)
    kwargs = {"beta": 0.01} if cls is VariationalAutoEncoder else {}
    model = cls(n_inputs=8, hidden=[32], latent=2, **kwargs)
    _train(model, lambda step: model.loss(train[(step % 8) * 256:(step % 8 + 1) * 256]), n_steps=400)
    ref, anomalies = _manifold(500, seed=1), _manifold(500, shift=1.0, seed=2)
    with torch.no_grad():
        s_ref, s_anom = model.score(ref), model.score(anomalies)
        per_feature = model.per_feature_error(anomalies)
    assert s_ref.shape == (500,) and per_feature.shape == (500, 8)
    torch.testing.assert_close(per_feature.mean(dim=1), s_anom)
    labels = np.r_[np.zeros(500), np.ones(500)]
    assert roc_auc_score(labels, torch.cat([s_ref, s_anom]).numpy()) > 0.9


def test_vae_reparametrisation_and_kl():
    vae = VariationalAutoEncoder(n_inputs=4, hidden=[8], latent=3)
    x = torch.randn(16, 4)
    vae.train()
    r1, mu, logvar = vae(x)
    r2, _, _ = vae(x)
    assert not torch.equal(r1, r2)  # sampled in training
    vae.eval()
    torch.testing.assert_close(vae(x)[0], vae(x)[0])
    assert torch.all(vae.kl(mu, logvar) >= 0)
    assert vae.kl(torch.zeros(2, 3), torch.zeros(2, 3)).abs().max() == 0
    assert vae.score(x, kind="kl").shape == (16,)
    with pytest.raises(ValueError):
        vae.score(x, kind="nope")


# ---------------------------------------------------------------- flows

def test_flow_inverse_is_exact_and_autoregressive():
    flow = ConditionalFlow(n_features=3, n_context=2, n_layers=3, hidden=16)
    with torch.no_grad():
        for made in flow.mades:
            made.out.weight.normal_(0, 0.3)
    ctx = torch.randn(10, 2)
    x = flow.sample(ctx, generator=torch.Generator().manual_seed(5))
    u, _ = flow.transform(x, ctx)
    torch.testing.assert_close(u, torch.randn(10, 3, generator=torch.Generator().manual_seed(5)),
                               atol=1e-5, rtol=1e-5)
    # MADE output d depends only on x_<d: its Jacobian is strictly lower triangular
    made = flow.mades[0]
    jac = torch.autograd.functional.jacobian(lambda v: made(v.unsqueeze(0), ctx[:1])[1][0], torch.randn(3))
    assert torch.all(jac.triu() == 0)
    with pytest.raises(ValueError, match="context"):
        flow.log_prob(x)


def test_flow_log_prob_normalised_in_2d():
    flow = ConditionalFlow(n_features=2, n_context=0, n_layers=2, hidden=8)
    with torch.no_grad():
        for made in flow.mades:
            made.out.weight.normal_(0, 0.3)
    grid = torch.linspace(-8, 8, 161)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    density = flow.log_prob(torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)).exp()
    assert float(density.detach().sum() * 0.1**2) == pytest.approx(1.0, abs=0.02)


def test_flow_learns_conditional_gaussian():
    def sigma(c):
        return 0.2 + 0.15 * (c + 1)

    c = torch.rand(4096, 1) * 2 - 1
    x = 2.0 * c + sigma(c) * torch.randn(4096, 1)
    flow = ConditionalFlow(n_features=1, n_context=1, n_layers=3, hidden=32)
    _train(flow, lambda step: flow.loss(x[(step % 8) * 512:(step % 8 + 1) * 512], c[(step % 8) * 512:(step % 8 + 1) * 512]),
           n_steps=400, lr=5e-3)
    for c0 in (-0.6, 0.0, 0.6):
        samples = flow.sample(torch.full((4000, 1), c0))
        assert float(samples.mean()) == pytest.approx(2.0 * c0, abs=0.05)
        assert float(samples.std()) == pytest.approx(sigma(c0), rel=0.15)


# ---------------------------------------------------------------- GAN

def test_gan_learns_conditional_mean():
    torch.manual_seed(1)
    gan = ConditionalGAN(n_outputs=1, n_context=1, n_noise=4, generator_hidden=[32, 32], discriminator_hidden=[32, 32])
    opt_g = torch.optim.Adam(gan.generator.parameters(), lr=2e-3, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(gan.discriminator.parameters(), lr=2e-3, betas=(0.5, 0.9))
    for _ in range(400):
        c = torch.rand(256, 1) * 2 - 1
        real = 1.5 * c + 0.2 * torch.randn(256, 1)
        losses = train_step(gan, real, c, opt_g, opt_d, label_smoothing=0.1, feature_matching=0.5)
    assert set(losses) == {"d_loss", "g_loss", "gradient_penalty", "feature_matching"}
    gan.eval()
    with torch.no_grad():
        for c0 in (-0.5, 0.5):
            fake = gan.generate(torch.full((2000, 1), c0))  # from the EMA generator
            assert float(fake.mean()) == pytest.approx(1.5 * c0, abs=0.1)
            assert 0.03 < float(fake.std()) < 0.4  # not collapsed (a tiny budget underestimates 0.2)
        noise = torch.randn(4, 4)
        ctx = torch.zeros(4, 1)
        torch.testing.assert_close(gan(noise, ctx), gan.generator_ema(noise, ctx))
        assert not torch.equal(gan.generate(ctx, noise=noise, use_ema=False), gan(noise, ctx))


def test_gan_gradient_penalty_step_runs():
    gan = ConditionalGAN(n_outputs=2, n_context=0, generator_hidden=[8], discriminator_hidden=[8],
                         spectral_norm=False, ema_decay=None)
    opt_g = torch.optim.Adam(gan.generator.parameters())
    opt_d = torch.optim.Adam(gan.discriminator.parameters())
    out = train_step(gan, torch.randn(32, 2), None, opt_g, opt_d, gp_weight=10.0, n_critic=2)
    assert out["gradient_penalty"] > 0
    assert gan.generate(num_samples=5).shape == (5, 2)


# ---------------------------------------------------------------- losses

def test_soft_histogram_tends_to_hard_histogram_and_is_differentiable():
    scores = torch.rand(2000, dtype=torch.float64)
    edges = torch.linspace(0, 1, 11, dtype=torch.float64)
    hard, _ = np.histogram(scores.numpy(), bins=edges.numpy())
    wide = soft_histogram(scores, edges, bandwidth=0.05)
    narrow = soft_histogram(scores, edges, bandwidth=1e-5)
    np.testing.assert_allclose(narrow.numpy(), hard, atol=1.0)
    assert np.abs(wide.numpy() - hard).sum() > np.abs(narrow.numpy() - hard).sum()
    weights = torch.full((2000,), 2.0, dtype=torch.float64)
    torch.testing.assert_close(soft_histogram(scores, edges, 1e-5, weights), 2 * narrow)
    torch.testing.assert_close(soft_histogram(scores, edges, 0.05, density=True).sum(),
                               torch.tensor(1.0, dtype=torch.float64))
    small = torch.rand(6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s: soft_histogram(s, edges, 0.1), (small,))


def test_shape_penalty_zero_for_same_shape_and_its_gradient_reduces_it():
    edges = torch.linspace(0, 1, 9)
    nominal = torch.rand(1000) * 0.5 + 0.25
    assert float(shape_penalty(nominal, nominal.clone(), edges, 0.05)) == pytest.approx(0.0, abs=1e-9)
    varied = (nominal + 0.1).requires_grad_(True)
    assert float(shape_penalty(nominal, varied, edges, 0.05, kind="chi2").detach()) > 0
    pen = shape_penalty(nominal, varied, edges, 0.05)
    (grad,) = torch.autograd.grad(pen, varied)
    assert float(pen.detach()) > 0
    assert float(grad.mean()) > 0  # moving the varied scores down (back) reduces the penalty
    with torch.no_grad():
        assert float(shape_penalty(nominal, varied - 0.1 * grad / grad.abs().max(), edges, 0.05)) < float(pen)
    with pytest.raises(ValueError, match="kind"):
        shape_penalty(nominal, nominal, edges, 0.05, kind="ks")


def _domains_toy(n: int, seed: int = 0):
    """x0 separates signal from background; x1 ≈ ±1 tells the two signal models apart (and is
    distributed the same way for background, so a classifier can drop it at no cost)."""
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, generator=g) < 0.5).long()
    dom = torch.where(y == 1, torch.randint(0, 2, (n,), generator=g), torch.full((n,), -1))
    x0 = torch.randn(n, generator=g) + torch.where(y == 1, 1.0, -1.0)
    side = torch.where(dom >= 0, dom, torch.randint(0, 2, (n,), generator=g)) * 2 - 1
    x1 = side + 0.5 * torch.randn(n, generator=g)
    return torch.stack([x0, x1], dim=1), y, dom


def _adnn_run(alpha: float, mode: str = "minimax") -> tuple[float, float]:
    """Train with ADNN; return (held-out classifier AUC, adversary accuracy over the last steps)."""
    torch.manual_seed(0)
    x, y, dom = _domains_toy(4096)
    clf, adv = MLP(2, [16, 8], 1, activation="tanh"), Adversary(8, 2, hidden=[16])
    opt_c, opt_a = torch.optim.Adam(clf.parameters(), 5e-3), torch.optim.Adam(adv.parameters(), 5e-3)
    accuracies = []
    for step in range(200):
        b = slice((step % 8) * 512, (step % 8 + 1) * 512)
        out = adnn_step(clf, adv, x[b], y[b], dom[b], opt_c, opt_a, alpha=alpha, mode=mode)
        accuracies.append(out["adversary_accuracy"])
    clf.eval()
    tx, ty, _ = _domains_toy(4096, seed=1)
    with torch.no_grad():
        auc = roc_auc_score(ty.numpy(), clf(tx).squeeze(-1).numpy())
    return auc, float(np.mean(accuracies[-50:]))


def test_adnn_drives_adversary_toward_chance():
    auc0, acc0 = _adnn_run(alpha=0.0)
    assert acc0 > 0.85  # without the adversary term the features tell the signal models apart
    for mode in ("minimax", "confusion"):
        auc, acc = _adnn_run(alpha=2.0, mode=mode)
        assert acc < acc0 - 0.2 and abs(acc - 0.5) < 0.25, (mode, acc, acc0)
        assert auc > 0.85 and auc > auc0 - 0.05  # ... and the classifier still classifies


def test_adnn_step_accepts_tuple_inputs_and_no_domain_batch():
    clf, adv = MLP(3, [4], 1), Adversary(4, 2)
    opt_c, opt_a = torch.optim.SGD(clf.parameters(), 0.1), torch.optim.SGD(adv.parameters(), 0.1)
    before = [p.clone() for p in adv.parameters()]
    out = adnn_step(clf, adv, (torch.randn(8, 3),), torch.zeros(8), torch.full((8,), -1), opt_c, opt_a, alpha=1.0)
    assert out["adversary_loss"] == 0.0 and math.isnan(out["adversary_accuracy"])
    assert all(torch.equal(a, b) for a, b in zip(before, adv.parameters()))


# ---------------------------------------------------------------- attribution

class _Analytic(torch.nn.Module):
    def forward(self, x):
        return 3 * x[:, 0] + x[:, 1] * x[:, 2]


def test_taylor_attribution_analytic():
    x = torch.randn(500, 4, dtype=torch.float64)
    res = taylor_attribution(_Analytic(), x, ["a", "b", "c", "d"], batch_size=128)
    first = dict((n, v) for n, v in res["first"])
    assert res["first"][0][0] == "a" and first["a"] == pytest.approx(3.0)
    assert first["b"] == pytest.approx(float(x[:, 2].abs().mean()))
    assert first["c"] == pytest.approx(float(x[:, 1].abs().mean()))
    assert first["d"] == 0.0 and res["first"][-1][0] == "d"
    top = res["second"][0]
    assert top[:2] == ["b", "c"] and top[2] == pytest.approx(1.0)
    assert all(v == 0.0 for _, _, v in res["second"][1:])
    assert len(res["second"]) == 10  # 4 diagonal + 6 pairs
    json.dumps(res)


def test_taylor_attribution_on_network_restores_mode_and_ranks_used_input():
    model = MLP(3, [16], 1, activation="tanh")
    x = torch.randn(64, 3)
    x_used = x.clone()
    model.train()
    with torch.no_grad():
        model[0].weight[:, 2] = 0  # input "z" is ignored by the network
    res = taylor_attribution(model, x_used, ["x", "y", "z"], top=2)
    assert model.training
    assert len(res["first"]) == 2 and "z" not in [n for n, _ in res["first"]]
    with pytest.raises(ValueError, match="names"):
        taylor_attribution(model, x, ["x", "y"])


# ---------------------------------------------------------------- export

def test_export_torchscript_and_onnx_match_torch(tmp_path):
    from hepray.models.export import check_export, export_onnx, export_torchscript

    model = MLP(4, [8], 2)
    example = torch.randn(5, 4)
    ts = export_torchscript(model, example, tmp_path / "m.pt")
    report = check_export(model, torch.randn(7, 4), torchscript_path=ts)
    assert report["torchscript"]["max_abs_diff"] < 1e-6
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    onnx_path = export_onnx(model, example, tmp_path / "m.onnx", input_names=["x"], output_names=["y"])
    report = check_export(model, torch.randn(7, 4), torchscript_path=ts, onnx_path=onnx_path)
    assert report["onnx"]["max_abs_diff"] < 1e-5


def test_export_particlenet_with_variable_particle_count(tmp_path):
    from hepray.models.export import check_export, export_onnx, export_torchscript

    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    model = ParticleNet(input_dims=3, num_classes=2)
    pts, fts, mask, _ = _jets(4, n_max=12)
    path = export_onnx(model, (pts, fts, mask), tmp_path / "pn.onnx", input_names=["points", "features", "mask"],
                       dynamic_axes=(0, 2), dynamo=False)
    ts = export_torchscript(model, (pts, fts, mask), tmp_path / "pn.pt")
    other = _jets(3, n_max=20, seed=3)[:3]
    report = check_export(model, other, torchscript_path=ts, onnx_path=path)
    assert report["onnx"]["max_abs_diff"] < 1e-4 and report["torchscript"]["max_abs_diff"] < 1e-5


def test_export_jetgraph_variable_jet_count_and_vae_first_output(tmp_path):
    from hepray.models.export import check_export, export_onnx, export_torchscript

    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    graph = JetGraphNet(n_features=4, hidden=8, n_layers=1)
    x, mask, _ = _events(3)
    path = export_onnx(graph, (x, mask), tmp_path / "g.onnx", dynamic_axes=(0, 1))
    tx, tmask, _ = _events(2, n_max=9, seed=4)
    assert check_export(graph, (tx, tmask), onnx_path=path)["onnx"]["max_abs_diff"] < 1e-5
    vae = VariationalAutoEncoder(n_inputs=5, hidden=[8], latent=2)
    ts = export_torchscript(vae, torch.randn(3, 5), tmp_path / "vae.pt")
    assert check_export(vae, torch.randn(4, 5), torchscript_path=ts)["torchscript"]["max_abs_diff"] < 1e-6


# ---------------------------------------------------------------- padding

def _constituents(record: bool = False):
    pt = ak.Array([[10.0, 20.0, 30.0], [], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [7.0]])
    events = {"part_pt": pt, "part_eta": pt * 0.01, "jet_pt": np.array([100.0, 50.0, 200.0, 70.0])}
    return ak.Array(events) if record else events


def test_padding_constant_and_wrap_with_masks():
    config = {"pts": {"length": 4, "pad_mode": "wrap", "vars": [["part_pt", None], ["part_eta", None]]},
              "fts": {"length": 4, "vars": [["part_pt", None, 1, -5, 5, -1.0]]},
              "glob": {"length": None, "vars": [["jet_pt", None]]}}
    params = parse_config(config)
    arrays, masks = apply_padding(_constituents(), params)
    assert arrays["pts"].shape == (4, 2, 4) and arrays["pts"].dtype == np.float32
    np.testing.assert_array_equal(arrays["pts"][:, 0], [[10, 20, 30, 10], [0, 0, 0, 0], [1, 2, 3, 4], [7, 7, 7, 7]])
    np.testing.assert_allclose(arrays["pts"][0, 1], [0.1, 0.2, 0.3, 0.1], rtol=1e-6)
    np.testing.assert_array_equal(arrays["fts"][:, 0], [[10, 20, 30, -1], [-1, -1, -1, -1], [1, 2, 3, 4], [7, -1, -1, -1]])
    expected_mask = [[1, 1, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    for g in ("pts", "fts"):
        assert masks[g].shape == (4, 1, 4) and masks[g].dtype == bool
        np.testing.assert_array_equal(masks[g][:, 0], expected_mask)
    assert "glob" not in masks and arrays["glob"].shape == (4, 1)
    tensors = to_torch(arrays)
    assert tensors["pts"].shape == (4, 2, 4)
    from_record, _ = apply_padding(_constituents(record=True), params)  # an awkward record array works too
    np.testing.assert_array_equal(from_record["pts"], arrays["pts"])


def test_padding_manual_transform_clips_and_auto_standardisation_is_stored():
    events = _constituents()
    config = {"fts": {"length": 3, "vars": [["part_pt", 10.0, 0.5, -2, 2], "part_eta"]},
              "glob": {"length": None, "vars": ["jet_pt"]}}
    params = fit_padding(events, config, fraction=1.0)
    json.loads(json.dumps(params))  # storable with the model
    var_pt, var_eta = params["groups"]["fts"]["vars"]
    assert (var_pt["center"], var_pt["scale"]) == (10.0, 0.5)
    flat = np.array([0.1, 0.2, 0.3, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07])
    low, med, high = np.percentile(flat, [16, 50, 84])
    assert var_eta["center"] == pytest.approx(med)
    assert var_eta["scale"] == pytest.approx(1 / max(high - med, med - low))
    arrays, _ = apply_padding(events, params)
    np.testing.assert_allclose(arrays["fts"][0, 0], [0.0, 2.0, 2.0])  # (20-10)*0.5 = 5 -> clipped to 2
    np.testing.assert_allclose(arrays["fts"][2, 0], [-2.0, -2.0, -2.0])
    np.testing.assert_allclose(arrays["fts"][0, 1], np.clip((np.array([0.1, 0.2, 0.3]) - med) * var_eta["scale"], -5, 5),
                               rtol=1e-5)
    assert arrays["fts"][1, 1].tolist() == [0.0, 0.0, 0.0]  # pad value is not standardised
    # a stored params dict reproduces the same arrays on new data without refitting
    again, _ = apply_padding(events, json.loads(json.dumps(params)))
    np.testing.assert_array_equal(again["fts"], arrays["fts"])


def test_padding_fraction_and_errors():
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 10, 1000)
    vals = ak.unflatten(rng.normal(5.0, 2.0, counts.sum()), counts)
    params = fit_padding({"x": vals}, {"g": {"length": 8, "vars": ["x"]}}, fraction=0.2, seed=1)
    var = params["groups"]["g"]["vars"][0]
    assert var["center"] == pytest.approx(5.0, abs=0.3) and 1 / var["scale"] == pytest.approx(2.0, rel=0.15)
    with pytest.raises(ValueError, match="fit_padding"):
        apply_padding({"x": vals}, parse_config({"g": {"length": 8, "vars": ["x"]}}))
    with pytest.raises(ValueError, match="pad_mode"):
        parse_config({"g": {"length": 8, "pad_mode": "reflect", "vars": ["x"]}})
    with pytest.raises(ValueError, match="differ"):
        apply_padding({"x": vals, "y": vals[::-1]}, parse_config({"g": {"length": 8, "vars": [["x", None], ["y", None]]}}))


class _Payload:
    """A pickle that would run code when unpickled: what a hostile model file carries."""

    def __reduce__(self):
        return (open, (str(_Payload.marker), "w"))


def test_pickled_code_in_a_torch_model_is_refused_not_run(tmp_path):
    """A model.pt holding a pickled callable: loading fails with one line naming the file, and
    the payload never runs (weights_only=True)."""
    from hepray.errors import ModelLoadError
    from hepray.models.artifact import save_metadata
    from hepray.models.predict import ModelBundle

    _Payload.marker = tmp_path / "payload_ran"
    mdir = tmp_path / "model"
    mdir.mkdir()
    torch.save({"weight": _Payload()}, mdir / "model.pt")
    save_metadata(mdir, {"type": "torch", "file": "model.pt", "features": ["a", "b", "c", "d"], "classes": ["s"],
                         "task": "binary", "architecture": ARCHS[0]})
    with pytest.raises(ModelLoadError) as exc:
        ModelBundle.read(str(mdir)).load(1)
    assert "model.pt" in exc.value.message and "\n" not in exc.value.message
    assert not _Payload.marker.exists()
