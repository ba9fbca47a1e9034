"""Sweeps: the cross product of hardware parameters, plans and lengths, run in parallel on a
Dask cluster (local by default, :mod:`hwflow.analysis.distributed`), cached on disk, written
as one CSV row per point.

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
    boards: [1, 2, 4, 8]             # optional: multi-board systems (hwflow.perf.system) ...
    parallel: tensor                 # ... split tensor or pipeline (one value or a list)
    batch: [1, 2, 4, 8]              # optional: batched decode (hwflow.perf.batch): B prefills,
                                     #   then decode steps of all B; each point's program holds
                                     #   B KV caches at max_len = prefill + decode (one board)
    mode: fast                       # fast | exact (hwflow.perf.sim)
    quality:                         # optional: each plan's perplexity on real text
      model: smollm2-135m            #   a checkpoint (.gguf / HF folder; default: the swept
      tokens: 128                    #   model when it is one), text (default: the shipped
                                     #   GPL-3 text); columns ppl, float_ppl, quality_model

A point whose preset or plan is invalid or unsupported (a DSP budget exceeded, an N:M the
chain cannot run, a model that does not fit) is recorded with ``status = invalid`` and the
reason, not fatal. Each finished point is stored under the cache directory by a hash of
everything that determines its result: the values of the resolved preset, plan, model and
energy table, the lengths and mode, and the source of the whole package
(:func:`hwflow.cache.key`), so an interrupted or repeated sweep recomputes nothing it already
has, and an edited table or model file is never answered from old rows.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from hwflow import cache
from hwflow.analysis.quality import QualitySpec, plan_quality, quality_spec
from hwflow.compiler.batch import check_batch
from hwflow.config import (
    CompressionPlan,
    HardwarePreset,
    ModelConfig,
    first_error,
    load_hw,
    load_model,
    load_plan,
    read_data,
)
from hwflow.energy import load_energy_table
from hwflow.errors import ConfigError, HwflowError
from hwflow.isa import Program

__all__ = [
    "Grid",
    "Point",
    "apply_hw",
    "load_grid",
    "resolve_point",
    "run_point",
    "run_sweep",
    "write_csv",
]

_GRID_KEYS = {"model", "presets", "hw", "plans", "plan_axes", "lengths", "mode", "quality",
              "boards", "parallel", "batch"}  # fmt: skip


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
    boards: int = 1  #: boards of the system (hwflow.perf.system when > 1)
    parallel: str = "tensor"  #: how the model splits over them
    batch: int | None = None  #: a batch sweep's point (:mod:`hwflow.perf.batch`); None: not one

    def label(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "point_model": self.model,
            "point_preset": self.preset,
            "point_plan": self.plan,
            "prefill": self.prefill,
            "decode": self.decode,
            "boards": self.boards,
            "parallel": self.parallel,
        }
        if self.batch is not None:
            d["point_batch"] = self.batch
        for k, v in self.hw:
            d[f"hw.{k}"] = v
        for k, v in self.plan_override:
            d[f"plan.{k}"] = v
        return d


@dataclass(frozen=True)
class Grid:
    points: tuple[Point, ...]
    quality: QualitySpec | None = None  #: what measures each plan's perplexity (or nothing)


def _as_list(v: Any) -> list:
    return list(v) if isinstance(v, list | tuple) else [v]


def load_grid(path: str | Path) -> Grid:
    """Read and check a grid file; ConfigError names the file and its first bad entry (the
    line and column of a YAML syntax error)."""
    p = Path(path)
    data = read_data(p)
    try:
        return _grid(p, data)
    except ConfigError as e:
        msg = str(e)
        raise ConfigError(msg if msg.startswith(f"{p}:") else f"{p}: {msg}") from None


def _grid(p: Path, data: Any) -> Grid:
    """The points of a grid file's ``data`` (every name and parameter path checked)."""
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
    batches = _batches(p, data.get("batch"))
    mode = str(data.get("mode", "fast"))
    if mode not in ("fast", "exact"):
        raise ConfigError(f"{p}: mode {mode!r} unknown (allowed: fast, exact)")
    systems = _systems(p, data)
    if batches != [None] and any(nb > 1 for _, nb in systems):
        raise ConfigError(f"{p}: batch and boards > 1 together (batched decode runs on one board)")
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
        Point(m, pr, hwc, pl, po, a, b, mode, nb, par, bt)
        for m, pr, hwc, (pl, po), (a, b), (par, nb), bt in itertools.product(
            models, presets, hw_combos, plan_combos, pairs, systems, batches
        )
    ]
    return Grid(tuple(pts), quality_spec(data.get("quality"), models, str(p)))


def _systems(p: Path, data: dict[str, Any]) -> list[tuple[str, int]]:
    """The grid's (parallel mode, boards) pairs: ``boards`` (whole numbers >= 1) crossed with
    ``parallel`` (tensor, pipeline)."""
    boards = _as_list(data.get("boards", [1]))
    modes = [str(m) for m in _as_list(data.get("parallel", ["tensor"]))]
    bad = [b for b in boards if not isinstance(b, int) or isinstance(b, bool) or b < 1]
    if bad:
        raise ConfigError(f"{p}: boards {bad} (allowed: whole numbers >= 1)")
    wrong = [m for m in modes if m not in ("tensor", "pipeline")]
    if wrong:
        raise ConfigError(f"{p}: parallel {wrong} unknown (allowed: tensor, pipeline)")
    return [(m, b) for m in modes for b in boards]


def _batches(p: Path, value: Any) -> list[int | None]:
    """The grid's ``batch`` list ([None]: no batch axis); ConfigError on a bad entry."""
    if value is None:
        return [None]
    out: list[int | None] = []
    for b in _as_list(value):
        if isinstance(b, bool) or not isinstance(b, int):
            raise ConfigError(f"{p}: batch entry {b!r} is not a whole number of sequences")
        out.append(check_batch(b, "batch"))
    return out


def program_spec(point: Point, cfg: ModelConfig) -> tuple[int, int]:
    """(max_len, batch) of the program ``point`` runs: the model's default max_len at batch 1,
    or for a batch sweep's point its batch and the case's length (B KV caches at the context
    the case reaches: what a server limited to that context holds)."""
    from hwflow.perf.sim import default_max_len

    if point.batch is None:
        return default_max_len(cfg), 1
    return point.prefill + point.decode, point.batch


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
        raise ConfigError(f"preset {data['name']}: {first_error(e)}") from None


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
        raise ConfigError(f"plan {name}: {first_error(e)}") from None


def resolve_point(point: Point) -> tuple[ModelConfig, HardwarePreset, CompressionPlan]:
    """The model, preset (with the point's changes) and plan of ``point``; HwflowError when
    one of them does not validate."""
    cfg = load_model(point.model)
    hw = apply_hw(load_hw(point.preset), point.hw)
    plan = _plan_for(point)
    return cfg, hw, plan


def point_key(point: Point) -> str:
    """Cache key of a point: its labels (they are in its row) and the values of everything
    that determines its result: the resolved model, preset (its digest) and plan, the energy
    table the preset names, and the package source (:func:`hwflow.cache.key`)."""
    try:
        cfg, hw, plan = resolve_point(point)
        table = load_energy_table(hw.energy_table) if hw.energy_table else None
        what: list[Any] = [cfg, hw.digest, plan, table]
    except HwflowError as e:
        what = ["invalid", str(e)]
    return cache.key("sweep-point", repr(point), what)


def _invalid_row(point: Point) -> dict[str, Any] | None:
    """The row of a point whose preset or plan does not even validate, else None."""
    try:
        resolve_point(point)
    except HwflowError as e:
        return {**point.label(), "status": "invalid", "reason": str(e)}
    return None


def run_point(point: Point, program: Program | None = None) -> dict[str, Any]:
    """Simulate one point (on ``program`` when given: the point's compiled program, shared by
    the points of a distributed sweep); an invalid point becomes a row with its reason."""
    from hwflow.perf.sim import simulate

    row: dict[str, Any] = point.label()
    if point.boards > 1:
        return _run_system(point, row)
    if point.batch is not None:
        return _run_batch_point(point, row, program)
    try:
        cfg, hw, plan = resolve_point(point)
        res = simulate(
            cfg,
            plan,
            hw,
            point.prefill,
            point.decode,
            mode=point.mode,
            program=program,  # type: ignore[arg-type]
        )
    except HwflowError as e:
        row.update(status="invalid", reason=str(e))
        return row
    row.update(res.summary())
    curve = res.decode_curve()
    pts = curve[::16] + ([curve[-1]] if curve and (len(curve) - 1) % 16 else [])
    row["curve"] = json.dumps([[c, round(ms, 6)] for c, ms in pts])
    row.update(status="ok", reason="")
    return row


def _run_system(point: Point, row: dict[str, Any]) -> dict[str, Any]:
    """A multi-board point (:func:`hwflow.perf.system.simulate_system`); invalid (a board count
    that does not split the model, a share that does not fit a board) with its reason."""
    from hwflow.perf.system import simulate_system

    try:
        cfg, hw, plan = resolve_point(point)
        res = simulate_system(cfg, plan, hw, point.prefill, point.decode, point.boards,
                              point.parallel)  # fmt: skip
    except HwflowError as e:
        row.update(status="invalid", reason=str(e))
        return row
    out = res.summary()
    for k in ("board_decode_tokens_per_s", "board_energy_j"):
        out[k] = json.dumps(out[k])
    row.update(out)
    row.update(status="ok", reason="")
    return row


def _run_batch_point(point: Point, row: dict[str, Any], program: Program | None) -> dict[str, Any]:
    """A batch sweep's point: :func:`hwflow.perf.batch.simulate_batch` at the point's batch."""
    from hwflow.perf.batch import simulate_batch

    try:
        cfg, hw, plan = resolve_point(point)
        max_len, batch = program_spec(point, cfg)
        res = simulate_batch(
            cfg, plan, hw, batch, point.prefill, point.decode, mode=point.mode, max_len=max_len,
            program=program,
        )  # fmt: skip
    except HwflowError as e:
        row.update(status="invalid", reason=str(e))
        return row
    row.update(res.summary())
    row.update(status="ok", reason="")
    return row


def run_sweep(
    grid: Grid,
    cache_dir: Path,
    *,
    workers: int = 2,
    scheduler: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    note: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every point not already in ``cache_dir``; return all rows in grid order.

    With ``scheduler`` (a Dask scheduler address) the points run on that cluster, else with
    ``workers`` > 1 on a local Dask cluster of that many processes, else in this process
    (:mod:`hwflow.analysis.distributed`). ``note`` hears how many points came from the cache
    and how many failed, ``progress(done, total)`` counts. A point invalid before it runs (its
    preset or plan does not validate) and a failed point (its worker died, or it raised) are
    not cached: the next run tries them again."""
    cache_dir = Path(cache_dir)
    keys = [point_key(p) for p in grid.points]
    rows: dict[str, dict[str, Any]] = {}
    todo: dict[str, Point] = {}
    cached = early = 0
    for p, k in zip(grid.points, keys, strict=True):
        if k in rows or k in todo:
            continue
        row = _invalid_row(p)  # cheap to redo: never cached
        if row is None:
            row = cache.read_json(cache_dir / f"{k}.json")  # None: missing or damaged
            cached += isinstance(row, dict)
        else:
            early += 1
        if isinstance(row, dict):
            rows[k] = row
        else:
            todo[k] = p
    done = len(grid.points) - len(todo)
    if note:
        note(
            f"sweep: {cached}/{len(grid.points)} points from the cache ({cache_dir}), "
            f"{len(todo)} to simulate, {early} invalid presets/plans"
        )
    if progress:
        progress(done, len(grid.points))

    def store(k: str, row: dict[str, Any]) -> None:
        nonlocal done
        rows[k] = row
        cache.write_json(cache_dir / f"{k}.json", row)
        done += 1
        if progress:
            progress(done, len(grid.points))

    failed = 0

    def fail(k: str, row: dict[str, Any]) -> None:
        nonlocal done, failed
        rows[k] = row
        done += 1
        failed += 1
        if progress:
            progress(done, len(grid.points))

    if todo and scheduler is None and (workers <= 1 or len(todo) == 1):
        for k, p in todo.items():
            store(k, run_point(p))
    elif todo:
        from hwflow.analysis.distributed import dask_client, run_points

        with dask_client(scheduler, workers) as client:
            run_points(client, todo, store, fail)
    if failed and note:
        note(f"sweep: {failed} points failed (not cached: a rerun tries them again)")
    out = [rows[k] for k in keys]
    if grid.quality is not None:
        _add_quality(grid, out, note)
    return out


def _add_quality(
    grid: Grid, rows: list[dict[str, Any]], note: Callable[[str], None] | None
) -> None:
    """Each valid row gets its plan's perplexity (:func:`~hwflow.analysis.quality.plan_quality`,
    once per distinct plan, cached)."""
    assert grid.quality is not None
    seen: dict[str, dict[str, Any]] = {}
    for p, row in zip(grid.points, rows, strict=True):
        if row.get("status") != "ok":
            continue
        plan = _plan_for(p)
        if plan.name not in seen:
            seen[plan.name] = plan_quality(grid.quality, plan, note)
        row.update(seen[plan.name])


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
