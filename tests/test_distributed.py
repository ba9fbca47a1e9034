"""Sweeps on dask.distributed: a real scheduler and two worker processes give the rows of the
in-process run; an unreachable scheduler is one clear error; a point whose workers die comes
back as a failed row (run_sweep does not cache those, so the next run retries it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hwflow.analysis import distributed as dd
from hwflow.analysis import sweep as sw
from hwflow.cli import main
from hwflow.errors import ConfigError

GRID = """
model: tiny-llama
presets: [tiny]
plans: [flightllm, w8a8]
lengths: [[16, 4], [8, 2]]
"""


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HWFLOW_CACHE", str(tmp_path / "cache"))


def _strip(rows):
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]


@pytest.fixture
def cluster(tmp_path):
    """`dask scheduler` and two `dask worker` processes, as a user would start them."""
    dask = str(Path(sys.executable).with_name("dask"))
    sfile = tmp_path / "scheduler.json"
    procs = [
        subprocess.Popen(
            [dask, "scheduler", "--port", "0", "--no-dashboard", "--scheduler-file", str(sfile)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    try:
        t0 = time.monotonic()
        while not sfile.exists() or not sfile.read_text():
            assert time.monotonic() - t0 < 60, "dask scheduler did not start"
            time.sleep(0.2)
        address = json.loads(sfile.read_text())["address"]
        for _ in range(2):
            procs.append(
                subprocess.Popen(
                    [dask, "worker", address, "--nthreads", "1", "--no-dashboard"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        from distributed import Client

        with Client(address, timeout=60) as c:
            c.wait_for_workers(2, timeout=120)
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            p.wait(timeout=30)


def test_remote_cluster_rows_equal_in_process_rows(tmp_path, cluster):
    g = sw.load_grid(_write(tmp_path, GRID))
    assert len(g.points) == 4
    local = sw.run_sweep(g, tmp_path / "a", workers=1)
    assert all(r["status"] == "ok" for r in local)
    notes: list[str] = []
    remote = sw.run_sweep(g, tmp_path / "b", scheduler=cluster, note=notes.append)
    assert _strip(remote) == _strip(local)
    assert "0/4 points from the cache" in notes[0]
    # every row was stored as it finished: a rerun takes all of them from the cache
    notes.clear()
    assert _strip(sw.run_sweep(g, tmp_path / "b", scheduler=cluster, note=notes.append)) == (
        _strip(local)
    )
    assert "4/4 points from the cache" in notes[0]


def test_points_share_one_program_per_group(tmp_path):
    g = sw.load_grid(_write(tmp_path, GRID))
    keys = {dd._program_key(p) for p in g.points}
    assert len(keys) == 2  # two plans; the lengths do not change the program


def test_unreachable_scheduler_is_one_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(dd, "CONNECT_TIMEOUT_S", 2)
    g = sw.load_grid(_write(tmp_path, GRID))
    with pytest.raises(
        ConfigError, match=r"cannot reach the Dask scheduler at 'tcp://127.0.0.1:9'"
    ):
        sw.run_sweep(g, tmp_path / "c", scheduler="tcp://127.0.0.1:9")
    out = tmp_path / "r.csv"
    grid = _write(tmp_path, GRID)
    assert main(["sweep", str(grid), "-o", str(out), "--scheduler", "tcp://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach the Dask scheduler" in err and "Traceback" not in err
    assert not out.exists()


def test_point_whose_workers_die_comes_back_failed(tmp_path):
    g = sw.load_grid(_write(tmp_path, GRID))
    victim = g.points[1]

    def run(point, program):  # runs on the workers (pickled by value)
        if point == victim:
            os._exit(3)
        return sw.run_point(point, program=program)

    stored, failed = {}, {}
    todo = {sw.point_key(p): p for p in g.points}
    with dd.dask_client(None, 2) as client:
        dd.run_points(client, todo, stored.__setitem__, failed.__setitem__, run=run)
    assert len(stored) == 3 and list(failed) == [sw.point_key(victim)]
    row = failed[sw.point_key(victim)]
    assert row["status"] == "failed" and "KilledWorker" in row["reason"]


def _write(tmp_path, text: str) -> Path:
    p = tmp_path / "grid.yaml"
    p.write_text(text)
    return p
