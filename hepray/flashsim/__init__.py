"""Flash simulation: learned parameterizations that replace the detector simulation.

In the spirit of LHCb's Lamarr: a *pipeline* of small models, each a parameterization of one
step of the full simulation, trained on full-simulation files and then run on generator-level
input at a tiny fraction of the cost:

1. an efficiency model, P(object reconstructed | generator-level features, conditions);
2. conditional generative models (a normalizing flow or a GAN, chosen per parameterization) of
   detector-level *responses* (``reco/gen``, ``reco - gen``, ...) given generator-level features,
   optionally chained (a later step conditioned on an earlier step's output);
3. derived columns (ratios, selection flags) computed from the generated ones.

Modules: :mod:`.config` (what a pipeline is), :mod:`.modules` (the torch modules, export-ready),
:mod:`.training`, :mod:`.pipeline` (artifact on disk, generation), :mod:`.validation` and
:mod:`.plots` (flash vs full). The workloads are ``train_flashsim`` and ``flashsim``
(:mod:`hepray.workloads.flashsim`); see docs/flashsim.md.
"""
