"""Sweeps: the cross product of hardware parameters, plans and lengths, run in parallel
processes, cached on disk, written as one CSV row per point.

Grid file (YAML)::

    model: llama2-7b                 # one name/path or a list
    presets: [u280]                  # base hardware presets (names or paths)
    hw:                              # optional axes over preset parameters (dotted paths)
      mv.chains: [64, 128]
      clock_mhz: [200, 225]
      hbm.channels: [16, 32]
    plans: [flightllm]               # plan names/paths ...
    plan_axes:                       # ... and/or plans made from the first one by
      bits: [4, 8]                   #     setting a field for every linear op (the plan's
                                     #     per-layer rules keep their other fields)
      sparsity: ["4:16", "8:16"]
    lengths: [[128, 512]]            # (prefill, decode) pairs
    mode: fast                       # fast | exact (hwflow.perf.sim)

A point whose preset or plan is invalid or unsupported (a DSP budget exceeded, an N:M the
chain cannot run, a model that does not fit) is recorded with ``status = invalid`` and the
reason, not fatal. Each finished point is stored under the cache directory by a hash of
everything that determines its result (resolved preset, plan and model, lengths, mode and the
source of the simulator, costs and compiler), so an interrupted or repeated sweep recomputes
nothing it already has.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import multiprocessing as mp
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from hwflow.config import (
    CompressionPlan,
    HardwarePreset,
    _first_error,
    load_hw,
    load_model,
    load_plan,
)
from hwflow.energy import load_energy_table
from hwflow.errors import ConfigError, HwflowError

__all__ = ["Grid", "Point", "apply_hw", "load_grid", "run_sweep", "write_csv"]

_GRID_KEYS = {"model", "presets", "hw", "plans", "plan_axes", "lengths", "mode"}


@dataclass(frozen=True)
class Point:
    """One sweep point (JSON-safe fields only: it crosses process boundaries)."""

    model: str
    preset: str
    hw: tuple[tuple[str, Any], ...]
    plan: str
    plan_override: tuple[tuple[str, Any], ...]
    prefill: int
    decode: int
    mode: str

    def label(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "point_model": self.model,
            "point_preset": self.preset,
            "point_plan": self.plan,
            "prefill": self.prefill,
            "decode": self.decode,
        }
        for k, v in self.hw:
            d[f"hw.{k}"] = v
        for k, v in self.plan_override:
            d[f"plan.{k}"] = v
        return d


@dataclass(frozen=True)
class Grid:
    points: tuple[Point, ...]


def _as_list(v: Any) -> list:
    return list(v) if isinstance(v, list | tuple) else [v]


def load_grid(path: str | Path) -> Grid:
    """Read and check a grid file; ConfigError names the first bad entry."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as e:
        raise ConfigError(f"{p}: cannot read ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: malformed YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a grid is a mapping, got {type(data).__name__}")
    unknown = set(data) - _GRID_KEYS
    if unknown:
        raise ConfigError(
            f"{p}: unknown grid keys {sorted(unknown)} (allowed: {sorted(_GRID_KEYS)})"
        )
    models = [str(m) for m in _as_list(data.get("model", "llama2-7b"))]
    presets = [str(x) for x in _as_list(data.get("presets", ["u280"]))]
    axes = data.get("hw") or {}
    if not isinstance(axes, dict):
        raise ConfigError(f"{p}: 'hw' maps parameter paths to lists of values")
    plans = [str(x) for x in _as_list(data.get("plans", ["flightllm"]))]
    plan_axes = data.get("plan_axes") or {}
    if not isinstance(plan_axes, dict) or set(plan_axes) - {"bits", "sparsity"}:
        raise ConfigError(f"{p}: plan_axes takes 'bits' and/or 'sparsity' lists")
    lengths = data.get("lengths", [[128, 512]])
    pairs: list[tuple[int, int]] = []
    for ln in _as_list(lengths):
        if not (
            isinstance(ln, list | tuple) and len(ln) == 2 and all(isinstance(x, int) for x in ln)
        ):
            raise ConfigError(f"{p}: lengths entry {ln!r} is not [prefill, decode]")
        pairs.append((ln[0], ln[1]))
    mode = str(data.get("mode", "fast"))
    if mode not in ("fast", "exact"):
        raise ConfigError(f"{p}: mode {mode!r} unknown (allowed: fast, exact)")
    # check names and parameter paths now, not in the workers
    for m in models:
        load_model(m)
    base = [load_hw(x) for x in presets]
    for path_ in axes:
        _check_path(base[0], str(path_))
    for pl in plans:
        load_plan(pl)
    hw_combos = (
        [
            tuple(zip(axes, vals, strict=True))
            for vals in itertools.product(*(_as_list(v) for v in axes.values()))
        ]
        if axes
        else [()]
    )
    pa_keys = list(plan_axes)
    plan_combos: list[tuple[str, tuple]] = [(pl, ()) for pl in plans] if not pa_keys else []
    if pa_keys:
        for vals in itertools.product(*(_as_list(plan_axes[k]) for k in pa_keys)):
            plan_combos.append((plans[0], tuple(zip(pa_keys, vals, strict=True))))
    pts = [
        Point(m, pr, hwc, pl, po, a, b, mode)
        for m, pr, hwc, (pl, po), (a, b) in itertools.product(
            models, presets, hw_combos, plan_combos, pairs
        )
    ]
    return Grid(tuple(pts))


def _check_path(hw: HardwarePreset, path: str) -> None:
    node: Any = hw
    parts = path.split(".")
    for i, part in enumerate(parts):
        fields = type(node).model_fields
        if part not in fields or part == "sources":
            known = sorted(f for f in fields if f != "sources")
            where = ".".join(parts[:i]) or "preset"
            raise ConfigError(
                f"unknown preset parameter {path!r} ({where} has: {', '.join(known)})"
            )
        node = getattr(node, part)


def apply_hw(hw: HardwarePreset, changes: Iterable[tuple[str, Any]]) -> HardwarePreset:
    """``hw`` with dotted-path parameters replaced (each records 'sweep point' as its source);
    ConfigError when the result is not a valid preset."""
    changes = list(changes)
    if not changes:
        return hw
    data = hw.model_dump(mode="json", exclude_unset=True)
    for path, value in changes:
        _check_path(hw, path)
        *head, last = path.split(".")
        node = data
        for part in head:
            node = node.setdefault(part, {})
        node[last] = value
        node.setdefault("sources", {})[last] = f"sweep point: {last} = {value!r}"
    data["name"] = hw.name + "".join(f"+{p}={v}" for p, v in changes)
    try:
        return HardwarePreset.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"preset {data['name']}: {_first_error(e)}") from None


def _plan_for(point: Point) -> CompressionPlan:
    plan = load_plan(point.plan)
    if not point.plan_override:
        return plan
    data = plan.model_dump(mode="json")
    w = dict(data.get("weights") or {})
    name = plan.name
    for k, v in point.plan_override:
        w[k] = v
        name += f"+{k}={v}"
    data["weights"] = w
    data["name"] = name
    # the override sets every op: drop the base plan's per-op rules for the swept field
    data["rules"] = [
        {k: v for k, v in r.items() if k not in dict(point.plan_override)} for r in data["rules"]
    ]
    try:
        return CompressionPlan.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"plan {name}: {_first_error(e)}") from None


def _code_digest() -> str:
    import hwflow.costs
    import hwflow.energy
    import hwflow.perf.sim

    h = hashlib.sha256()
    for mod in (hwflow.costs, hwflow.energy):
        h.update(Path(mod.__file__).read_bytes())
    for f in sorted(Path(hwflow.perf.sim.__file__).parent.glob("*.py")):
        h.update(f.read_bytes())
    h.update(hwflow.perf.sim._compiler_digest().encode())
    return h.hexdigest()[:16]


def _resolve(point: Point):
    cfg = load_model(point.model)
    hw = apply_hw(load_hw(point.preset), point.hw)
    plan = _plan_for(point)
    return cfg, hw, plan


def point_key(point: Point, code: str) -> str:
    """Hash of the point (its labels are in its row) and of everything that determines its
    result: the resolved model, preset, energy table and plan and the simulator's source."""
    try:
        cfg, hw, plan = _resolve(point)
        what = [cfg.model_dump(mode="json"), hw.digest, plan.model_dump(mode="json")]
        if hw.energy_table is not None:  # the table's numbers, not only its name
            what.append(load_energy_table(hw.energy_table).model_dump(mode="json"))
    except HwflowError as e:
        what = ["invalid", str(e)]
    blob = json.dumps([repr(point), what, code], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def run_point(point: Point) -> dict[str, Any]:
    """Simulate one point; an invalid point becomes a row with its reason."""
    from hwflow.perf.sim import simulate

    row: dict[str, Any] = point.label()
    try:
        cfg, hw, plan = _resolve(point)
        res = simulate(cfg, plan, hw, point.prefill, point.decode, mode=point.mode)  # type: ignore[arg-type]
    except HwflowError as e:
        row.update(status="invalid", reason=str(e))
        return row
    row.update(res.summary())
    curve = res.decode_curve()
    pts = curve[::16] + ([curve[-1]] if curve and (len(curve) - 1) % 16 else [])
    row["curve"] = json.dumps([[c, round(ms, 6)] for c, ms in pts])
    row.update(status="ok", reason="")
    return row


def _worker(args: tuple[Point, str]) -> tuple[str, dict[str, Any]]:
    point, key = args
    return key, run_point(point)


def run_sweep(
    grid: Grid,
    cache_dir: Path,
    *,
    workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every point not already in ``cache_dir``; return all rows in grid order."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    code = _code_digest()
    keys = [point_key(p, code) for p in grid.points]
    rows: dict[str, dict[str, Any]] = {}
    todo: list[tuple[Point, str]] = []
    for p, k in zip(grid.points, keys, strict=True):
        f = cache_dir / f"{k}.json"
        if k in rows:
            continue
        if f.is_file():
            try:
                rows[k] = json.loads(f.read_text())
                continue
            except (OSError, json.JSONDecodeError):
                pass  # a damaged entry is recomputed
        if k not in {t[1] for t in todo}:
            todo.append((p, k))
    done = len(grid.points) - len(todo)
    if progress:
        progress(done, len(grid.points))

    def store(k: str, row: dict[str, Any]) -> None:
        nonlocal done
        rows[k] = row
        tmp = cache_dir / f".{k}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(row, sort_keys=True, default=str))
        tmp.replace(cache_dir / f"{k}.json")
        done += 1
        if progress:
            progress(done, len(grid.points))

    if todo:
        if workers <= 1 or len(todo) == 1:
            for p, k in todo:
                store(k, run_point(p))
        else:
            ctx = mp.get_context("fork")
            with ctx.Pool(workers) as pool:
                for k, row in pool.imap_unordered(_worker, todo):
                    store(k, row)
    return [rows[k] for k in keys]


def write_csv(rows: list[dict[str, Any]]) -> str:
    """The rows as CSV text; columns are the union, labels first."""
    cols: list[str] = []
    for r in rows:
        for c in r:
            if c not in cols:
                cols.append(c)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return buf.getvalue()
