"""FlightLLM's public artifact read as data: its compiler IR -> an hwflow compression plan.

FlightLLM (Zeng et al., FPGA 2024) publishes, in ``FlightLLM/flightllm_test_demo``
(``profile/.compiler_output/ir_output/llama2_{prefill,decode}_token_*.yaml``), the IR its
profiler runs: one entry per layer op; every ``linear_mv`` / ``linear_mm`` entry carries its
weight's ``dtype`` and ``sparse_flag`` / ``sparse_ratio``. :func:`plan_from_ir` turns those
into a plan: the weight bits from the dtype, and the sparsity as the *densest-needed* N:M the
preset runs (the smallest allowed N with N/M >= sparse_ratio, so no more weights are dropped
than the IR drops). In the published IR every layer's q and k are ``sparse_ratio: 0.7`` and
every other weight is dense INT8; 0.7 is not an N:16 pattern (N in 2, 4, 8, 16), so they map
to dense, which is also what the artifact's profiler loads (its ``IR_linear_mv.py`` builds the
weight-block table ``fsb_info`` all dense and only scales the MV time by the ratio).

Run ``python -m hwflow.analysis.flightllm IR.yaml`` to print the plan of an IR file.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from hwflow.errors import ConfigError

__all__ = [
    "ARTIFACT",
    "PROFILER_DIVISOR",
    "linears_from_ir",
    "plan_from_ir",
    "with_profiler_divisor",
]

#: The artifact revision the shipped plan was read from.
ARTIFACT = "github.com/FlightLLM/flightllm_test_demo @ d355ca40c50690f098260e21a45cc30c519d2938"

#: FlightLLM's profiler divides every instruction time by this hard-coded factor
#: (``profile/inst_gen/inst_profiler.py``: ``self.correction_factor = 3.2``; no derivation is
#: given, see docs/SOURCES.md#flightllm-artifact). hwflow never applies it to its own figures;
#: :func:`with_profiler_divisor` applies it explicitly, to compare with the profiler's output.
PROFILER_DIVISOR = 3.2

#: IR weight-name prefix -> hwflow linear op.
_OPS = {
    "q_proj": "q",
    "k_proj": "k",
    "v_proj": "v",
    "out_proj": "o",
    "gate": "gate",
    "up": "up",
    "down": "down",
}
_BITS = {"int8": 8, "int4": 4}


def _entry(item: dict[str, Any]) -> tuple[str, int | None, int, float] | None:
    """(op, layer or None for the LM head, bits, density) of one linear IR entry."""
    if item.get("type") not in ("linear_mv", "linear_mm"):
        return None
    w = next((p for p in item.get("param", []) if str(p.get("name", "")).endswith(".weight")), None)
    if w is None:
        raise ConfigError(f"IR entry {item.get('name')!r}: a linear op without a weight param")
    stem = str(w["name"]).removesuffix(".weight")
    if stem == "lm_head_layer":
        op, layer = "lm_head", None
    else:
        prefix, _, idx = stem.rpartition("_layer_")
        if prefix not in _OPS or not idx.isdigit():
            raise ConfigError(f"IR weight {w['name']!r}: unknown op (known: {sorted(_OPS)})")
        op, layer = _OPS[prefix], int(idx)
    if w.get("dtype") not in _BITS:
        raise ConfigError(
            f"IR weight {w['name']!r}: dtype {w.get('dtype')!r} (known: {list(_BITS)})"
        )
    ratio = float(w.get("sparse_ratio", 1)) if w.get("sparse_flag") else 1.0
    if not 0 < ratio <= 1:
        raise ConfigError(f"IR weight {w['name']!r}: sparse_ratio {ratio} outside (0, 1]")
    return op, layer, _BITS[w["dtype"]], ratio


def linears_from_ir(
    ir: Sequence[dict[str, Any]],
) -> dict[tuple[str, int | None], tuple[int, float]]:
    """(op, layer) -> (weight bits, kept fraction) of every linear op of an IR (LM head: layer
    None)."""
    out: dict[tuple[str, int | None], tuple[int, float]] = {}
    for item in ir:
        e = _entry(item)
        if e is not None:
            out[(e[0], e[1])] = (e[2], e[3])
    return out


def _nm(ratio: float, n_allowed: Sequence[int], m: int) -> str:
    n = min((n for n in n_allowed if n / m >= ratio - 1e-12), default=m)
    return "dense" if n == m else f"{n}:{m}"


def plan_from_ir(
    ir: Sequence[dict[str, Any]],
    name: str,
    *,
    n_allowed: Sequence[int] = (2, 4, 8, 16),
    m: int = 16,
) -> dict[str, Any]:
    """An hwflow plan (as a dict) holding the IR's precision and sparsity per op and layer:
    the most common (bits, N:M) is the default, every other (op, layer) a rule."""
    lin = linears_from_ir(ir)
    head = lin.pop(("lm_head", None), None)
    if not lin:
        raise ConfigError("the IR holds no linear layer")
    spec = {k: (bits, _nm(r, n_allowed, m)) for k, (bits, r) in lin.items()}
    counts: dict[tuple[int, str], int] = {}
    for v in spec.values():
        counts[v] = counts.get(v, 0) + 1
    base = max(counts, key=counts.__getitem__)
    by: dict[tuple[int, str, str], list[int]] = {}
    for (op, layer), v in sorted(spec.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        if v != base:
            by.setdefault((*v, op), []).append(layer or 0)
    plan: dict[str, Any] = {
        "name": name,
        "weights": {"bits": base[0], "sparsity": base[1]},
    }
    rules = [{"layers": ls, "ops": [op], "bits": b, "sparsity": s} for (b, s, op), ls in by.items()]
    if rules:
        plan["rules"] = rules
    if head is not None:
        plan["lm_head"] = {"bits": head[0], "sparsity": _nm(head[1], n_allowed, m)}
    return plan


def with_profiler_divisor(tokens_per_s: float) -> float:
    """A rate as FlightLLM's profiler would report it: every instruction time divided by
    :data:`PROFILER_DIVISOR`, so the rate multiplied by it. For comparison only."""
    return tokens_per_s * PROFILER_DIVISOR


def main(argv: Sequence[str]) -> int:
    """Print the plan of the IR file ``argv[0]`` as YAML."""
    path = Path(argv[0])
    ir = yaml.safe_load(path.read_text())
    plan = plan_from_ir(ir, path.stem)
    ratios = sorted({r for _, r in linears_from_ir(ir).values()})
    print(f"# generated by hwflow.analysis.flightllm from {path.name}; IR kept fractions {ratios}")
    print(yaml.safe_dump(plan, sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
