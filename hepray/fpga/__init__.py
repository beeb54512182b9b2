"""FPGA trigger stage: a trained small MLP or BDT, converted to HLS firmware and emulated.

Modules, each importable on its own (hls4ml and conifer load only where used):

- :mod:`~hepray.fpga.fixed`      ``ap_fixed<W,I,Q,O>`` in numpy (parse, grid, quantize)
- :mod:`~hepray.fpga.artifacts`  read/write model artifacts; float reference outputs
- :mod:`~hepray.fpga.hls`        hls4ml conversion of torch MLPs (precision/ReuseFactor per model or layer)
- :mod:`~hepray.fpga.bdt`        conifer conversion of xgboost BDTs, with the xgboost >= 2 corrections
- :mod:`~hepray.fpga.emulate`    compile the C simulation with g++, batched bit-accurate prediction
- :mod:`~hepray.fpga.fidelity`   decision/argmax agreement, score differences, ROC, efficiency at a rate
- :mod:`~hepray.fpga.scan`       precision scan as Ray tasks, narrowest precision within tolerance
- :mod:`~hepray.fpga.estimate`   HLS synthesis report when the tools exist, else an analytic estimate
- :mod:`~hepray.fpga.qat`        quantization-aware training matching hls4ml's arithmetic

The ``kind: fpga`` workload (:mod:`hepray.workloads.fpga`) strings them together; docs/fpga.md
has the measured figures.
"""
