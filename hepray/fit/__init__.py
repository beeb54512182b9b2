"""Histogram templates for the statistical inference (``kind: templates``) and the fit on them.

- :mod:`.templates`: binning, the per-shard fill (a pure function of columns), writing
  ``templates.root`` in CMS combine's naming and a datacard, and the pyhf JSON workspace.
- :mod:`.pyhf_fit`: expected discovery significance and the 95 % CL upper limit on the signal
  strength with pyhf (``pip install hepray[fit]``).
"""
