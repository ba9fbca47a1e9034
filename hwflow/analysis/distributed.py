"""Sweep points on ``dask.distributed``: a ``LocalCluster`` by default, any cluster by address.

Why Dask: design-space sweeps (thousands of points x models x plans) outgrow one machine's
process pool; a Dask scheduler takes workers from any number of machines (``dask scheduler``
on one host, ``dask worker ADDRESS`` on each of the others, or any Dask deployment) with no
change to the sweep.

How the work is cut. Points that share a compiled program (same resolved model, preset and
plan: the program does not depend on the lengths or the mode) form a group; each group's
program is one task (:func:`_compile`, compiled where it runs, through the worker's program
cache) and every point of the group takes that task's result as an input, so Dask moves the
program to each worker that needs it once, not once per point. Rows come back as they finish
and the caller stores each one at once (:func:`hwflow.analysis.sweep.run_sweep` caches every
row on disk), so an interrupted sweep loses nothing and resumes from its cache.

A point whose worker dies is retried on another worker (``retries``); a point that still fails
(or raises) comes back as a ``status = failed`` row that is *not* cached, so the next run
simulates it again. Results do not depend on where a point ran: a point computes the same row
in any process (the tests compare a two-worker cluster with the in-process run).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from hwflow import cache
from hwflow.errors import ConfigError, HwflowError

if TYPE_CHECKING:
    from distributed import Client

    from hwflow.analysis.sweep import Point
    from hwflow.isa import Program

__all__ = ["CONNECT_TIMEOUT_S", "RETRIES", "dask_client", "run_points"]

#: Seconds to wait for a scheduler given by address before calling it unreachable.
CONNECT_TIMEOUT_S = 10
#: Extra attempts of a point whose worker died (Dask reschedules it elsewhere).
RETRIES = 2


@contextmanager
def dask_client(scheduler: str | None, workers: int) -> Iterator[Client]:
    """A client of the cluster at ``scheduler`` (``tcp://host:port``), or of a new local
    cluster of ``workers`` single-threaded processes when ``scheduler`` is None.
    ConfigError when the scheduler cannot be reached."""
    from distributed import Client, LocalCluster

    if scheduler is None:
        with (
            LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",  # a free port: never collide with another cluster
                silence_logs=logging.CRITICAL,  # shutdown races log noise; failures come back through futures
            ) as cluster,
            Client(cluster) as client,
        ):
            yield client
        return
    try:
        client = Client(scheduler, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError, ValueError) as e:
        raise ConfigError(
            f"cannot reach the Dask scheduler at {scheduler!r} ({type(e).__name__}: {e}); "
            "start one with `dask scheduler` and workers with `dask worker ADDRESS`, "
            "or leave out --scheduler to run on a local cluster"
        ) from None
    with client:
        yield client


def _program_key(point: Point) -> str:
    """Points with equal keys run the same compiled program."""
    from hwflow.analysis.sweep import program_spec, resolve_point

    cfg, hw, plan = resolve_point(point)
    system = (point.boards, point.parallel) if point.boards > 1 else ()
    return cache.key("sweep-program", cfg, hw.digest, plan, *program_spec(point, cfg), *system)


def _compile(point: Point) -> Program | None:
    """The program every point of ``point``'s group runs (None: the point is invalid, and
    each point of the group then reports its own reason)."""
    from hwflow.analysis.sweep import program_spec, resolve_point
    from hwflow.perf.sim import compile_cached

    if point.boards > 1:  # a multi-board point compiles its boards' programs itself
        return None
    try:
        cfg, hw, plan = resolve_point(point)
        max_len, batch = program_spec(point, cfg)
        return compile_cached(cfg, plan, hw, max_len, batch=batch)
    except HwflowError:
        return None


def _run(point: Point, program: Program | None) -> dict[str, Any]:
    from hwflow.analysis.sweep import run_point

    return run_point(point, program=program)


def _failed_row(point: Point, err: BaseException) -> dict[str, Any]:
    return {**point.label(), "status": "failed", "reason": f"{type(err).__name__}: {err}"}


def run_points(
    client: Client,
    todo: Mapping[str, Point],
    store: Callable[[str, dict[str, Any]], None],
    fail: Callable[[str, dict[str, Any]], None],
    run: Callable[[Point, Program | None], dict[str, Any]] = _run,
) -> None:
    """Run the points of ``todo`` (cache key -> point) on ``client``'s cluster with ``run``
    (point, its program) -> row; hand each finished row to ``store`` as it arrives, each
    failed one to ``fail``."""
    from distributed import as_completed

    programs: dict[str, Any] = {}
    futures = []
    owner = {}
    for k, p in todo.items():
        pk = _program_key(p)
        if pk not in programs:
            programs[pk] = client.submit(_compile, p, key=f"program-{pk}", retries=RETRIES)
        fut = client.submit(run, p, programs[pk], key=f"point-{k}", retries=RETRIES)
        futures.append(fut)
        owner[fut.key] = (k, p)
    for fut in as_completed(futures):
        k, p = owner[fut.key]
        try:
            store(k, fut.result())
        except Exception as e:  # a worker died too often, or the point raised
            fail(k, _failed_row(p, e))
        finally:
            fut.release()
