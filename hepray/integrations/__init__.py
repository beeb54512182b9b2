"""Ways into hepray from other frameworks (Dask). Each module imports its framework lazily, so
the core never needs it installed."""
