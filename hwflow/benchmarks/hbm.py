"""``hwflow bench hbm``: the HBM bandwidth model's curve (aggregate GB/s against the contiguous
run size, sequential and row-opening) next to the published figures of
``mappings/measurements/hbm.yaml``. The published figures are never inputs of the model: the
model derives its rates from the preset's port, burst, latency, refresh and row-miss fields
(:mod:`hwflow.costs`)."""

from __future__ import annotations

import argparse

HELP = "the HBM bandwidth model's curve next to published U280 measurements"

#: contiguous run sizes of the printed curve (bytes)
RUNS = (32, 64, 128, 256, 512, 1024, 4096, 65536, 1 << 20)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hw", default="u280", help="hardware preset whose HBM fields are used")


def run(args: argparse.Namespace) -> int:
    from hwflow.analysis.measurements import hbm_points, model_gbps
    from hwflow.config import load_hw
    from hwflow.costs import hbm_achievable_gbps, hbm_stream_gbps

    hw = load_hw(args.hw)
    print(
        f"{hw.name}: {hw.hbm.channels} channels x {hw.hbm.channel_gbps} GB/s ="
        f" {hw.hbm.peak_gbps:.1f} GB/s raw peak; achievable {hbm_achievable_gbps(hw):.1f} GB/s"
        f" (port {hw.hbm.port_bits} b x {hw.hbm.port_mhz:g} MHz, {hw.hbm.outstanding} bursts"
        f" in flight, refresh {hw.hbm.refresh_ns:g}/{hw.hbm.refresh_interval_ns:g} ns)"
    )
    print(f"{'run bytes':>10} {'sequential GB/s':>16} {'new row per run GB/s':>21}")
    for b in RUNS:
        seq = hbm_stream_gbps(hw, b)
        miss = hbm_stream_gbps(hw, b, new_row=True)
        print(f"{b:>10} {seq:>16.1f} {miss:>21.1f}")
    print("\npublished figures (model evaluated on the point's own port and pattern):")
    print(f"{'published':>10} {'model':>8} {'model/pub':>9}  kind      point")
    for p in hbm_points():
        m = model_gbps(p)
        print(f"{p.gbps:>10.1f} {m:>8.1f} {m / p.gbps:>9.3f}  {p.kind:<8}  {p.name}")
        print(f"{'':>31}source: {p.source}")
    return 0
