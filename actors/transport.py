"""Hot-path transport of observations and action chunks between env and inference workers.

Two interchangeable channels (``rollout.transport``):

- ``ray``: ``actor.infer.remote(obs)`` / ``ray.get`` (Ray's task path: scheduling, ownership,
  the object store for large arguments).
- ``zmq``: one pyzmq ROUTER socket per inference worker, a DEALER per env worker. Messages are a
  JSON header (field names, dtypes, shapes) plus one raw buffer per numpy field -- no pickle, so
  a stray peer can at worst send a malformed array, never code. Replies are matched by request id,
  so several env groups can have requests in flight at once.

Ray still starts, places and restarts every actor and carries weights (object store) and
segments; only the per-chunk request/response moves to zmq. ``benchmarks/throughput.py``
measures both side by side; the faster is the default (numbers in the README).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")


class TransportError(RuntimeError):
    """The zmq peer did not answer in time or answered with an error."""


def pack(obj: Any) -> list[Any]:
    """Dataclass of numpy arrays (+ int/float/str scalars) -> [header, buffer, ...] frames."""
    fields, buffers, scalars = [], [], {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, np.ndarray):
            a = np.ascontiguousarray(v)
            fields.append([f.name, a.dtype.str, list(a.shape)])
            buffers.append(memoryview(a).cast("B") if a.size else b"")
        else:
            scalars[f.name] = v
    header = json.dumps({"fields": fields, "scalars": scalars}).encode()
    return [header, *buffers]


def unpack(cls: type[T], frames: list[Any]) -> T:
    """Inverse of :func:`pack` (the dataclass validates shapes/dtypes in its constructor)."""
    header = json.loads(bytes(frames[0]))
    if "error" in header:
        raise TransportError(header["error"])
    kwargs: dict[str, Any] = dict(header["scalars"])
    for (name, dtype, shape), buf in zip(header["fields"], frames[1:]):
        kwargs[name] = np.frombuffer(buf, dtype=np.dtype(dtype)).reshape(shape).copy()
    return cls(**kwargs)


class ZmqServer:
    """Inference side: serve ``handler(request) -> reply`` on a ROUTER socket (asyncio)."""

    def __init__(self, host: str, request_cls: type, handler: Callable[[Any], Awaitable[Any]]) -> None:
        import zmq
        import zmq.asyncio

        self._ctx = zmq.asyncio.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        port = self._sock.bind_to_random_port(f"tcp://{host}")
        self.endpoint = f"tcp://{host}:{port}"
        self._cls, self._handler = request_cls, handler
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._serve())

    async def _serve(self) -> None:
        while True:
            ident, rid, *payload = await self._sock.recv_multipart(copy=False)
            asyncio.ensure_future(self._answer(ident.bytes, rid.bytes, payload))

    async def _answer(self, ident: bytes, rid: bytes, payload: list[Any]) -> None:
        try:
            reply = pack(await self._handler(unpack(self._cls, [f.buffer for f in payload])))
        except Exception as e:  # the env worker raises it (and falls back to the Ray path)
            reply = [json.dumps({"error": f"{type(e).__name__}: {e}"}).encode()]
        await self._sock.send_multipart([ident, rid, *reply], copy=False)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._sock.close(0)
        self._ctx.term()  # every socket of this context is closed: returns at once


class ZmqClient:
    """Env-worker side: ``submit(request) -> id`` then ``wait(id) -> reply`` (several in flight)."""

    def __init__(self, endpoint: str, reply_cls: type, timeout_s: float) -> None:
        import zmq

        self._zmq = zmq
        self._sock = zmq.Context.instance().socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(endpoint)
        self.endpoint, self._cls, self.timeout_ms = endpoint, reply_cls, int(timeout_s * 1000)
        self._ids = itertools.count()
        self._done: dict[bytes, list[Any]] = {}

    def submit(self, request: Any) -> bytes:
        rid = str(next(self._ids)).encode()
        self._sock.send_multipart([rid, *pack(request)], copy=False)
        return rid

    def wait(self, rid: bytes) -> Any:
        while rid not in self._done:
            if not self._sock.poll(self.timeout_ms):
                raise TransportError(f"no reply from {self.endpoint} within {self.timeout_ms / 1000:.0f} s")
            got, *frames = self._sock.recv_multipart()
            self._done[got] = frames
        return unpack(self._cls, self._done.pop(rid))

    def close(self) -> None:
        self._sock.close(0)
