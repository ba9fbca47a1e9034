"""The accelerator as one RTL machine: instruction fetch, the SYS dispatcher, per-unit queues
with dependency tokens, LD/ST onto the HBM channels, the on-chip buffers, the MM/MV matmul
units and the SFU. Every instruction field comes from :data:`hwflow.isa.OPCODES` through
:mod:`hwflow.hw.machine.decode`."""
