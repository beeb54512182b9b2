"""Anomaly scans as pure functions of arrays, testable without Ray or torch.

- :mod:`.reference`: the reference (held-out "good" data) score distribution stored with a model:
  a quantile table giving per-event tail probabilities and bootstrap pseudo-lumisections.
- :mod:`.lumi`: per-(run, lumisection) running sums over scored events (bounded memory,
  mergeable), the per-lumisection statistics, their p-values under the reference, flags and the
  features that drive each flag.
- :mod:`.dqm`: per-lumisection histogram models (classical per-variable tests against the
  reference, an autoencoder on normalised lumisection histograms), pseudo-lumisections and the
  calibration of their thresholds on held-out good lumisections.
- :mod:`.search`: event-level search: score histograms per sample, signal efficiency at fixed
  background rates with their statistical precision.
- :mod:`.plots`: the report's figures.

The workloads ``train_anomaly`` and ``anomaly_scan`` (``hepray/workloads/anomaly_*.py``) drive
these through the engine; see ``docs/anomaly.md``.
"""

from __future__ import annotations

from .lumi import LumiSums, lumi_table
from .reference import ReferenceTable
from .search import ScoreHistograms

__all__ = ["LumiSums", "ReferenceTable", "ScoreHistograms", "lumi_table"]
