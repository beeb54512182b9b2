"""hepray's numpy ROC/AUC against scikit-learn's on weighted, tied and multi-class-style inputs,
and the one-line refusal when a class is missing."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from hepray.report import metrics


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ties", [False, True])
def test_roc_and_auc_equal_scikit_learn(weighted, ties):
    rng = np.random.default_rng(3)
    n = 20_000
    y = rng.random(n) < 0.3
    s = rng.normal(y * 1.2, 1.0)
    if ties:
        s = np.round(s, 1)  # many equal scores, as a BDT with few trees gives
    w = rng.uniform(0.2, 3.0, n) if weighted else None
    tpr, fpr, thr = metrics.roc(y, s, w)
    fpr_ref, tpr_ref, thr_ref = roc_curve(y, s, sample_weight=w)
    np.testing.assert_allclose(tpr, tpr_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(fpr, fpr_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(thr[1:], thr_ref[1:])  # sklearn's first threshold is +inf too (>= 1.3)
    assert metrics.auc(y, s, w) == pytest.approx(roc_auc_score(y, s, sample_weight=w), abs=1e-12)
    # integer labels (0/1) as the workloads pass them, and rejection on the same curve
    assert metrics.auc(y.astype(int), s, w) == pytest.approx(metrics.auc(y, s, w))
    eff_b = np.interp(0.3, tpr_ref, fpr_ref)
    assert metrics.rejection_at(y, s, w, 0.3) == pytest.approx(1 / eff_b)


def test_roc_refuses_a_single_class():
    with pytest.raises(ValueError, match="both classes"):
        metrics.auc(np.zeros(10), np.arange(10.0))


@pytest.mark.parametrize("n1,n2,shift", [(20_000, 30_000, 0.0), (50_000, 50_000, 0.01), (30_000, 30_000, 0.03)])
def test_ks_asymptotic_agrees_with_scipy(n1, n2, shift):
    from scipy.stats import ks_2samp

    rng = np.random.default_rng(7)
    a, b = rng.normal(0, 1, n1), rng.normal(shift, 1, n2)
    ref, got = ks_2samp(a, b), metrics.ks(a, b)
    assert got["statistic"] == pytest.approx(ref.statistic, abs=1e-12)
    assert got["pvalue"] == pytest.approx(ref.pvalue, abs=2e-3, rel=0.02)
    small = metrics.ks(a[:500], b[:300])  # small samples: scipy's exact p-value
    assert small["pvalue"] == pytest.approx(ks_2samp(a[:500], b[:300]).pvalue)
