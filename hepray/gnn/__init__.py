"""Graph-network taggers: the data side.

- :mod:`hepray.gnn.inputs`: jet constituents (jagged awkward columns from ``read_shard``) ->
  padded ``points``/``features``/``mask`` arrays for ParticleNet, configured weaver-style and
  applied in the reading stage, so training and inference share one code path.
- :mod:`hepray.gnn.events`: jets grouped into per-event graphs (jets as nodes) for per-jet
  predictions, and the 2-D (pT, η) efficiency map they are compared with.

The networks are in :mod:`hepray.models.particlenet` and :mod:`hepray.models.jetgraph`; the
workloads in ``hepray.workloads.train_gnn``, ``infer_gnn`` and ``train_jetgraph``.
"""
