"""Beam Python worker pool for EXTERNAL environments, shared by every TaskManager / executor.

It serves the same gRPC service as ``python -m apache_beam.runners.worker.worker_pool_main
--service_port N`` (each StartWorker request starts one SDK worker process), fixed for a pool
that several runner processes share on one machine:

* Worker ids are not unique across runner processes: every Flink TaskManager (and Spark
  executor) numbers its environments "1-1", "2-1", ... itself.  Beam's pool keys its processes
  by that id alone, so with two TaskManagers a StopWorker from one of them killed the other's
  freshly started worker and that task then waited forever for its SDK worker.  Here processes
  are keyed by (worker id, caller's gRPC peer): a runner sends StartWorker and StopWorker over
  the same channel.
* Beam's pool binds ``[::]:PORT`` (every interface); this one binds ``--bind_host`` (default
  127.0.0.1) only.
* Workers run under the interpreter running this file (``sys.executable``: the repo's .venv
  with apache_beam and this project), not whatever ``python`` is first on PATH.
* Workers' stdout/stderr go to the pool's own log instead of an unread pipe (a chatty worker
  could fill the pipe and block), and exited workers are reaped.
* Workers start as Beam's container boot program starts them: ``sdk_worker_main`` with the
  pipeline's options read from the runner's provisioning service. Beam's pool runs a bare
  ``SdkHarness`` that never sees the options, so filesystems configured by them failed or went
  elsewhere on the workers (``hdfs://`` and ``--hdfs_host``, ``s3://`` and ``--s3_endpoint_url``).

Usage: python deploy/worker_pool.py --service_port 8097 [--bind_host 127.0.0.1]
Workers import the pipeline's code by module name: run the pool with PYTHONPATH set accordingly
(deploy/cluster.sh sets the repo root).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import traceback

import grpc
from apache_beam.portability.api import (
    beam_fn_api_pb2,
    beam_fn_api_pb2_grpc,
    beam_provision_api_pb2,
    beam_provision_api_pb2_grpc,
)
from apache_beam.utils import thread_pool_executor
from google.protobuf import json_format, text_format

_LOGGER = logging.getLogger("crawl2clip.worker_pool")

PROVISION_TIMEOUT_S = 60


def worker_environment(request) -> dict[str, str]:
    """The variables ``sdk_worker_main`` reads, as Beam's boot program sets them: the runner's
    endpoints from the StartWorker request, the options from its provisioning service."""
    with grpc.insecure_channel(request.provision_endpoint.url) as channel:
        info = beam_provision_api_pb2_grpc.ProvisionServiceStub(channel).GetProvisionInfo(
            beam_provision_api_pb2.GetProvisionInfoRequest(),
            metadata=[("worker_id", request.worker_id)],  # the runner answers per worker
            timeout=PROVISION_TIMEOUT_S,
        ).info
    env = {
        "WORKER_ID": request.worker_id,
        "CONTROL_API_SERVICE_DESCRIPTOR": text_format.MessageToString(request.control_endpoint),
        "PIPELINE_OPTIONS": json_format.MessageToJson(info.pipeline_options),
        "RUNNER_CAPABILITIES": " ".join(info.runner_capabilities),
    }
    if request.logging_endpoint.url:  # worker logs then reach the runner's log too
        env["LOGGING_API_SERVICE_DESCRIPTOR"] = text_format.MessageToString(request.logging_endpoint)
    if info.status_endpoint.url:
        env["STATUS_API_SERVICE_DESCRIPTOR"] = text_format.MessageToString(info.status_endpoint)
    return env


def _stop_process(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class SharedWorkerPool(beam_fn_api_pb2_grpc.BeamFnExternalWorkerPoolServicer):
    def __init__(self):
        self._lock = threading.Lock()
        self._workers: dict[tuple[str, str], subprocess.Popen] = {}
        self._closed = False

    def StartWorker(self, request, context):
        key = (request.worker_id, context.peer())
        command = [sys.executable, "-m", "apache_beam.runners.worker.sdk_worker_main"]
        try:
            env = {**os.environ, **worker_environment(request)}
            with self._lock:
                if self._closed:
                    return beam_fn_api_pb2.StartWorkerResponse(error="worker pool is stopping")
                proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, close_fds=True, env=env)
                previous = self._workers.get(key)
                self._workers[key] = proc
        except Exception:  # pylint: disable=broad-except
            return beam_fn_api_pb2.StartWorkerResponse(error=traceback.format_exc())
        _LOGGER.info(
            "started worker %s for %s (pid %d, control %s)",
            request.worker_id,
            key[1],
            proc.pid,
            request.control_endpoint.url,
        )
        if previous is not None and previous.poll() is None:
            _LOGGER.warning("worker %s for %s restarted; stopping the old one", *key)
            threading.Thread(target=_stop_process, args=(previous,), daemon=True).start()
        return beam_fn_api_pb2.StartWorkerResponse()

    def StopWorker(self, request, context):
        key = (request.worker_id, context.peer())
        with self._lock:
            proc = self._workers.pop(key, None)
            if proc is None:
                same_id = [k for k in self._workers if k[0] == request.worker_id]
                if len(same_id) == 1:  # the caller reconnected: its peer address changed
                    proc = self._workers.pop(same_id[0])
                elif same_id:
                    _LOGGER.warning(
                        "StopWorker %s from %s matches workers of %d other callers; leaving "
                        "them (a worker exits when its runner closes the control channel)",
                        request.worker_id,
                        key[1],
                        len(same_id),
                    )
        if proc is not None:
            _LOGGER.info("stopping worker %s for %s (pid %d)", request.worker_id, key[1], proc.pid)
            threading.Thread(target=_stop_process, args=(proc,), daemon=True).start()
        return beam_fn_api_pb2.StopWorkerResponse()

    def reap(self) -> None:
        """Forget (and reap) workers that exited by themselves."""
        with self._lock:
            for key, proc in list(self._workers.items()):
                if proc.poll() is not None:
                    del self._workers[key]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            procs = list(self._workers.values())
            self._workers.clear()
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            _stop_process(proc)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--service_port", type=int, required=True)
    parser.add_argument("--bind_host", default="127.0.0.1")
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Anything a worker itself spawns as "python" should find this interpreter too.
    bin_dir = os.path.dirname(os.path.abspath(sys.executable))
    os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")

    server = grpc.server(
        thread_pool_executor.shared_unbounded_instance(),
        options=[
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.http2.max_ping_strikes", 0),
        ],
    )
    pool = SharedWorkerPool()
    beam_fn_api_pb2_grpc.add_BeamFnExternalWorkerPoolServicer_to_server(pool, server)
    bound = server.add_insecure_port("%s:%d" % (args.bind_host, args.service_port))
    if bound == 0:
        _LOGGER.error("could not bind %s:%d", args.bind_host, args.service_port)
        return 1
    server.start()
    _LOGGER.info(
        "worker pool listening on %s:%d (workers: %s, PYTHONPATH=%s)",
        args.bind_host,
        bound,
        sys.executable,
        os.environ.get("PYTHONPATH", ""),
    )

    stop = threading.Event()

    def _on_signal(signum, _frame):
        _LOGGER.info("signal %d: stopping worker pool", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    while not stop.wait(5.0):
        pool.reap()
    server.stop(grace=1).wait()
    pool.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
