"""Pytest plugin: real local Flink and Spark session clusters for Beam's portable runners, and a
real HDFS.

Register it from tests/conftest.py with ``pytest_plugins = ["tests.cluster_fixtures"]`` (or import
the fixtures into a test module).  It provides three session-scoped fixtures:

* ``flink_cluster`` -- JobManager + TaskManager(s) + a Beam Flink job server + a Beam Python worker
  pool (EXTERNAL environment), started by ``deploy/cluster.sh flink start``.
* ``spark_cluster`` -- Spark master + worker + a Beam Spark job server + a worker pool, started by
  ``deploy/cluster.sh spark start``.
* ``hdfs_cluster`` -- a NameNode and a DataNode with WebHDFS (one JVM), started by
  ``deploy/cluster.sh hdfs start``; its ``pipeline_args`` are Beam's ``--hdfs_*`` flags.

Each yields a :class:`Cluster` whose ``pipeline_args`` are the flags to hand to a Beam pipeline and
whose ``rest_url`` is Flink's REST API / the Spark master's web UI (``/json``) / the NameNode's
HTTP server (WebHDFS).  On teardown they run ``deploy/cluster.sh <kind> stop`` and then check that
no process of the process groups they started is left (what is left is SIGKILLed and the teardown
fails), also when the test failed. A cluster that was already running when the fixture started
(``deploy/cluster.sh <kind> start`` answers "already running": someone started it by hand) is
joined and left running.  ``hdfs_dir`` (per test) is a fresh ``hdfs://`` folder, with
Beam's ``FileSystems`` set to reach the HDFS, deleted afterwards.

:func:`flink_job_subtask_records` reads a finished Flink job's per-subtask record counts from the
REST API, so a test can check that work really ran in more than one parallel subtask.

Environment: ``FLINK_TASKMANAGERS`` / ``FLINK_SLOTS`` and the port variables that
``deploy/cluster.sh`` documents are passed through; ``CLUSTER_INSTALL_TIMEOUT`` (s, default 1800).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import threading
import time
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
CLUSTER_SH = REPO_ROOT / "deploy" / "cluster.sh"
CACHE_DIR = Path(os.environ.get("CLUSTER_CACHE_DIR", REPO_ROOT / ".cache" / "clusters"))
RUN_DIR = CACHE_DIR / "run"
LOG_DIR = CACHE_DIR / "logs"

INSTALL_TIMEOUT = float(os.environ.get("CLUSTER_INSTALL_TIMEOUT", "1800"))
START_TIMEOUT = float(os.environ.get("CLUSTER_START_TIMEOUT", "240")) + 120
STOP_TIMEOUT = 180.0


@dataclass
class Cluster:
    """A running local cluster, as started by ``deploy/cluster.sh``."""

    kind: str  # "flink", "spark" or "hdfs"
    pipeline_args: list[str]  # flags for beam PipelineOptions
    rest_url: str  # Flink REST API, the Spark master web UI (its /json), or WebHDFS's server
    job_endpoint: str  # host:port of the Beam job server ("" for hdfs)
    worker_pool: str  # host:port of the Beam worker pool, EXTERNAL environment ("" for hdfs)
    info: dict[str, str] = field(default_factory=dict)  # all of run/<kind>.info
    process_groups: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (pgid, start)
    joined: bool = False  # it was running before: not ours to stop

    def rest(self, path: str, timeout: float = 10.0) -> Any:
        """GET ``rest_url + path`` and decode the JSON answer."""
        return rest_get(self.rest_url, path, timeout=timeout)

    def flink_job_records(self, job_id: str | None = None, **kwargs) -> "FlinkJobRecords":
        """:func:`flink_job_subtask_records` for this (Flink) cluster."""
        assert self.kind == "flink", "flink_job_records needs the flink_cluster fixture"
        return flink_job_subtask_records(self.rest_url, job_id, **kwargs)

    def spark_applications(self) -> dict[str, list[dict[str, Any]]]:
        """:func:`spark_applications` for this (Spark) cluster."""
        assert self.kind == "spark", "spark_applications needs the spark_cluster fixture"
        return spark_applications(self.rest_url)


# ---------------------------------------------------------------------------------------------
# processes


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(process group id, start time in clock ticks) of a live pid, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except OSError:
        return None
    fields = data[data.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); pgrp is field 5, starttime field 22.
    if fields[0] == "Z":
        return None
    return int(fields[2]), int(fields[19])


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _group_members(pgid: int, not_before: int) -> list[int]:
    """Live pids in process group ``pgid`` that started at or after ``not_before`` (ticks)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        st = _proc_stat(int(entry))
        if st and st[0] == pgid and st[1] >= not_before:
            pids.append(int(entry))
    return pids


def _read_pidfiles(kind: str) -> dict[str, tuple[int, int]]:
    groups = {}
    for f in sorted(RUN_DIR.glob(f"{kind}-*.pid")):
        try:
            pid, start = f.read_text().split()[:2]
            groups[f.stem] = (int(pid), int(start))
        except (OSError, ValueError):
            continue
    return groups


def _read_info(kind: str) -> dict[str, str]:
    info = {}
    path = RUN_DIR / f"{kind}.info"
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            info[key.strip()] = value.strip()
    return info


def _log_tails(kind: str, lines: int = 30) -> str:
    out = []
    for f in sorted(LOG_DIR.glob(f"{kind}-*")):
        try:
            text = f.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            continue
        out.append(f"---- {f} (last {len(text)} lines)\n" + "\n".join(text))
    return "\n".join(out)


def _run_cluster_sh(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(CLUSTER_SH), *args],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )


def _leftovers(groups: dict[str, tuple[int, int]]) -> dict[str, list[int]]:
    left = {}
    for name, (pgid, start) in groups.items():
        members = _group_members(pgid, start)
        if members:
            left[name] = members
    return left


def stop_and_verify(kind: str, groups: dict[str, tuple[int, int]]) -> None:
    """``cluster.sh KIND stop``; SIGKILL and report any process of ``groups`` still alive."""
    try:
        res = _run_cluster_sh(kind, "stop", timeout=STOP_TIMEOUT)
        stop_output = res.stdout
    except subprocess.TimeoutExpired as exc:
        stop_output = f"cluster.sh {kind} stop timed out: {exc}"
    groups = {**groups, **_read_pidfiles(kind)}
    left = _leftovers(groups)
    if not left:
        return
    described = {
        name: [f"{pid}: {_cmdline(pid)[:160]}" for pid in pids] for name, pids in left.items()
    }
    for name, (pgid, _start) in groups.items():  # fallback: kill by recorded process group
        if name in left:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except OSError:
                pass
    deadline = time.monotonic() + 15
    while _leftovers(groups) and time.monotonic() < deadline:
        time.sleep(0.2)
    raise AssertionError(
        f"'deploy/cluster.sh {kind} stop' left processes running (now SIGKILLed): "
        f"{json.dumps(described, indent=1)}\nstop output:\n{stop_output}"
    )


# ---------------------------------------------------------------------------------------------
# cluster lifecycle; shared per process so that duplicate registrations of the fixtures (plugin
# plus a direct import) never start a second cluster on the same ports.

_LOCK = threading.Lock()
_ACTIVE: dict[str, list] = {}  # kind -> [Cluster, refcount]
_INSTALLED = False


def _install() -> None:
    global _INSTALLED
    if _INSTALLED:
        return
    try:
        res = _run_cluster_sh("install", timeout=INSTALL_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"deploy/cluster.sh install took more than {INSTALL_TIMEOUT:.0f}s")
    if res.returncode != 0:
        pytest.fail(f"deploy/cluster.sh install failed (rc={res.returncode}):\n{res.stdout[-6000:]}")
    _INSTALLED = True


def start_cluster(kind: str, *start_args: str) -> Cluster:
    """Install if needed, start (or join) the ``kind`` cluster and return it."""
    with _LOCK:
        if kind in _ACTIVE:
            _ACTIVE[kind][1] += 1
            return _ACTIVE[kind][0]
        _install()
        t0 = time.monotonic()
        try:
            res = _run_cluster_sh(kind, "start", *start_args, timeout=START_TIMEOUT)
            ok, output = res.returncode == 0, res.stdout
        except subprocess.TimeoutExpired as exc:
            ok, output = False, f"timed out after {START_TIMEOUT:.0f}s: {exc}"
        groups = _read_pidfiles(kind)
        if not ok:
            tails = _log_tails(kind)
            try:
                stop_and_verify(kind, groups)
            except AssertionError as exc:
                tails += f"\n{exc}"
            pytest.fail(f"deploy/cluster.sh {kind} start failed:\n{output[-4000:]}\n{tails}")
        info = _read_info(kind)
        cluster = Cluster(
            kind=kind,
            pipeline_args=shlex.split(info["args"]),
            rest_url=info["rest_url"],
            job_endpoint=info.get("job_endpoint", ""),
            worker_pool=info.get("worker_pool", ""),
            info={**info, "start_seconds": f"{time.monotonic() - t0:.1f}"},
            process_groups=groups,
            joined=f"{kind} already running" in output,
        )
        _ACTIVE[kind] = [cluster, 1]
        return cluster


def release_cluster(kind: str) -> None:
    """Drop one reference; the last one stops the cluster and checks nothing is left."""
    with _LOCK:
        entry = _ACTIVE.get(kind)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _ACTIVE[kind]
        if not entry[0].joined:
            stop_and_verify(kind, entry[0].process_groups)


def _cluster_fixture(kind: str, *start_args: str) -> Iterator[Cluster]:
    cluster = start_cluster(kind, *start_args)
    try:
        yield cluster
    finally:
        release_cluster(kind)


@pytest.fixture(scope="session")
def flink_cluster() -> Iterator[Cluster]:
    """A local Flink session cluster with Beam job server and worker pool (EXTERNAL).

    Two TaskManagers with one slot each by default (FLINK_TASKMANAGERS / FLINK_SLOTS override),
    so that a job with parallelism 2 really runs in two JVMs sharing one worker pool.
    """
    args = [
        "--taskmanagers",
        os.environ.get("FLINK_TASKMANAGERS", "2"),
        "--slots",
        os.environ.get("FLINK_SLOTS", "1"),
    ]
    yield from _cluster_fixture("flink", *args)


@pytest.fixture(scope="session")
def spark_cluster() -> Iterator[Cluster]:
    """A local Spark standalone cluster with Beam job server and worker pool (EXTERNAL)."""
    yield from _cluster_fixture("spark")


@pytest.fixture(scope="session")
def hdfs_cluster() -> Iterator[Cluster]:
    """A local HDFS (NameNode + DataNode, WebHDFS), shared by every test of the session."""
    yield from _cluster_fixture("hdfs")


@pytest.fixture
def hdfs_dir(hdfs_cluster) -> Iterator[str]:
    """A new, empty ``hdfs://`` folder for one test, deleted afterwards. Beam's ``FileSystems``
    reads the HDFS's address from the options of the last pipeline built in this process, so
    they are set here again for each test."""
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    FileSystems.set_options(PipelineOptions(hdfs_cluster.pipeline_args))
    folder = f"hdfs://crawl2clip-tests/{uuid.uuid4().hex[:12]}"
    yield folder
    FileSystems.set_options(PipelineOptions(hdfs_cluster.pipeline_args))
    FileSystems.delete([folder])


def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers", "cluster: needs a real local Flink/Spark cluster or HDFS (slow: tens of seconds)"
    )


# ---------------------------------------------------------------------------------------------
# REST helpers


def rest_get(base_url: str, path: str, timeout: float = 10.0) -> Any:
    url = base_url.rstrip("/") + "/" + path.lstrip("/")
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.load(resp)


@dataclass
class FlinkVertexRecords:
    id: str
    name: str
    parallelism: int
    # one entry per subtask: {"subtask", "status", "host", "read_records", "write_records"}
    subtasks: list[dict[str, Any]]

    def active_subtasks(self) -> int:
        """Subtasks that read or wrote at least one record."""
        return sum(1 for s in self.subtasks if s["read_records"] > 0 or s["write_records"] > 0)

    def active_taskmanagers(self) -> set[str]:
        """TaskManagers whose subtasks of this vertex read or wrote records."""
        return {
            s["taskmanager"] or s["host"]
            for s in self.subtasks
            if s["read_records"] > 0 or s["write_records"] > 0
        }


@dataclass
class FlinkJobRecords:
    jid: str
    name: str
    state: str
    vertices: list[FlinkVertexRecords]

    def max_active_subtasks(self) -> int:
        """The largest number of subtasks of one vertex that processed records."""
        return max((v.active_subtasks() for v in self.vertices), default=0)

    def max_active_taskmanagers(self) -> int:
        """The largest number of TaskManagers that processed records of one vertex."""
        return max((len(v.active_taskmanagers()) for v in self.vertices), default=0)

    def summary(self) -> str:
        lines = [f"job {self.jid} {self.name!r} {self.state}"]
        for v in self.vertices:
            per = ", ".join(
                f"#{s['subtask']}@{s['taskmanager'] or s['host']}: "
                f"in={s['read_records']} out={s['write_records']}"
                for s in v.subtasks
            )
            lines.append(f"  p={v.parallelism} {v.name[:90]!r}: {per}")
        return "\n".join(lines)


def flink_find_job(rest_url: str, name_contains: str | None = None) -> dict[str, Any]:
    """Newest job (by start time) from ``/jobs/overview``, optionally filtered by name."""
    jobs = rest_get(rest_url, "/jobs/overview")["jobs"]
    if name_contains:
        jobs = [j for j in jobs if name_contains in j.get("name", "")]
    if not jobs:
        raise LookupError(f"no Flink job{' named ~' + name_contains if name_contains else ''}")
    return max(jobs, key=lambda j: j.get("start-time", 0))


def flink_cancel_jobs(rest_url: str, name_contains: str) -> list[str]:
    """Cancel every unfinished job whose name contains ``name_contains`` (a failed test's job
    must not keep the cluster's slots from the tests after it); returns their ids."""
    terminal = {"FINISHED", "FAILED", "CANCELED"}
    cancelled = []
    for job in rest_get(rest_url, "/jobs/overview")["jobs"]:
        if name_contains in job.get("name", "") and job.get("state") not in terminal:
            url = f"{rest_url.rstrip('/')}/jobs/{urllib.parse.quote(job['jid'])}?mode=cancel"
            urllib.request.urlopen(urllib.request.Request(url, method="PATCH"), timeout=10).close()
            cancelled.append(job["jid"])
    return cancelled


def flink_job_subtask_records(
    rest_url: str,
    job_id: str | None = None,
    *,
    name_contains: str | None = None,
    wait_terminal_s: float = 60.0,
) -> FlinkJobRecords:
    """Per-vertex, per-subtask ``read-records``/``write-records`` of a Flink job via REST.

    The job is ``job_id``, or else the newest one whose name contains ``name_contains`` (the
    newest job at all when both are None).  Waits up to ``wait_terminal_s`` for the job to reach
    a terminal state so that the counts are final.
    """
    if job_id is None:
        job_id = flink_find_job(rest_url, name_contains)["jid"]
    jid = urllib.parse.quote(job_id)
    deadline = time.monotonic() + wait_terminal_s
    while True:
        job = rest_get(rest_url, f"/jobs/{jid}")
        if job["state"] in ("FINISHED", "FAILED", "CANCELED") or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    vertices = []
    for v in job["vertices"]:
        detail = rest_get(rest_url, f"/jobs/{jid}/vertices/{urllib.parse.quote(v['id'])}")
        subtasks = []
        for s in detail.get("subtasks", []):
            m = s.get("metrics", {})
            subtasks.append(
                {
                    "subtask": s.get("subtask"),
                    "status": s.get("status"),
                    "host": s.get("host") or s.get("endpoint"),
                    "taskmanager": s.get("taskmanager-id"),
                    "read_records": int(m.get("read-records", 0)),
                    "write_records": int(m.get("write-records", 0)),
                }
            )
        vertices.append(
            FlinkVertexRecords(
                id=v["id"],
                name=v.get("name", ""),
                parallelism=int(v.get("parallelism", len(subtasks))),
                subtasks=subtasks,
            )
        )
    return FlinkJobRecords(jid=job["jid"], name=job.get("name", ""), state=job["state"], vertices=vertices)


def spark_applications(rest_url: str) -> dict[str, list[dict[str, Any]]]:
    """The Spark master's ``/json``: ``{"active": [...], "completed": [...]}`` applications."""
    d = rest_get(rest_url, "/json")
    return {"active": d.get("activeapps", []), "completed": d.get("completedapps", [])}
