"""An Observe stream on one sidecar, recorded as ``holder`` events.

Each sidecar reports the election's holder changes as *it* applies them
(its first message is its current state). The history needs every node's
view, not just the leader's, so the runner keeps one stream per node and
opens it again whenever it ends: the sidecar was killed, restarted, wiped.
A stopped (SIGSTOP) sidecar simply sends nothing until SIGCONT.
"""

from __future__ import annotations

import threading

import grpc

from sidecar.pb.raftsidecar.worker.v1 import worker_pb2, worker_pb2_grpc
from tests.chaos.history import HistoryWriter, Holder

RECONNECT_S = 0.2


class Observer:
    def __init__(self, api: str, node: str, election: str, history: HistoryWriter) -> None:
        self.api = api
        self.node = node
        self.election = election
        self.history = history
        self.events = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._call: grpc.Future | None = None
        self._thread = threading.Thread(target=self._run, name=f"observe {node}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            if self._call is not None:
                self._call.cancel()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            with grpc.insecure_channel(self.api) as channel:
                stub = worker_pb2_grpc.ElectionServiceStub(channel)
                call = stub.Observe(worker_pb2.ObserveRequest(election=self.election))
                with self._lock:
                    self._call = call
                    if self._stop.is_set():
                        call.cancel()
                try:
                    for response in call:
                        change = response.change
                        self.history.record(
                            Holder,
                            node=self.node,
                            election=change.election or self.election,
                            worker=change.holder or None,
                            token=int(change.fencing_token) or None,
                        )
                        self.events += 1
                except grpc.RpcError:
                    pass  # down, restarting, or stopped by us: open it again
            self._stop.wait(RECONNECT_S)
