"""Amaranth hardware of the accelerator's matrix engines: sparse, mixed-precision DSP chains.

* :mod:`hwflow.hw.params`: :class:`EngineParams` from a hardware preset, port layouts.
* :mod:`hwflow.hw.dsp`: the DSP48E2/DSP58 stage and the systolic chain.
* :mod:`hwflow.hw.widen`, :mod:`hwflow.hw.requant`: weight widening, requantization.
* :mod:`hwflow.hw.engine`: the matrix-vector and matrix-matrix engines.
* :mod:`hwflow.hw.generate`: Verilog + manifest (``hwflow rtl``), lint.
* :mod:`hwflow.hw.synth`: Yosys resource estimates (``hwflow synth``).
* :mod:`hwflow.hw.pack`: packing Python values into port words (benches, drivers).
"""

from hwflow.hw.engine import ChainEngine, MatrixMatrixEngine, MatrixVectorEngine
from hwflow.hw.params import EngineParams

__all__ = ["ChainEngine", "EngineParams", "MatrixMatrixEngine", "MatrixVectorEngine"]
