"""hwflow: compiler, RTL generator and cycle-level simulator for FPGA LLM accelerators."""
