"""Ray Serve policy server: observation -> action chunk over HTTP JSON and a websocket.

(No ``from __future__ import annotations`` here: FastAPI must resolve ``Request``/``WebSocket``
annotations on the Serve-wrapped methods at import time.)

    rlsys serve CKPT [--port 8000]          # binds 127.0.0.1 unless --host says otherwise

Routes (JSON):
    GET  /spec  -> cameras, image size, proprio/action dims, horizon, control rate
    POST /act   {"images": [C][S][S][3] ints 0..255  (or {"b64": base64 of the raw uint8 bytes}),
                 "proprio": [P] floats, "instruction": str}
                -> {"actions": [H][A] floats, "version": int}
    WS   /ws    the same request/response objects, one per message
    WS   /      openpi's policy-server protocol (msgpack + numpy; rlsys.deploy.openpi): a client written
                for a pi0 server drives this policy unchanged

Requests from many clients are batched (``@serve.batch``). Bodies over ``max_body_bytes`` get 413 (read to the
end and dropped first, up to 4x the limit, so a client still sending sees the answer, not a broken pipe);
malformed requests get 400/422 with a message naming the field. Sampling is deterministic: the ODE from
the same starting noise for every request, so an observation always gets the same actions, whatever
it is batched with.
"""


import base64
import binascii
import json
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse
from ray import serve

from rlsys.checkpoint import load_policy
from rlsys.deploy.openpi import OpenPIAdapter, OpenPIKeys, ProtocolError, packb, unpackb
from rlsys.flow import ODE
from rlsys.prompt import ObservationBuilder

MAX_BODY_BYTES = 4 * 1024 * 1024
# Bodies up to this many times the limit are read and dropped before the 413, so the client gets it.
DRAIN_FACTOR = 4
MAX_INSTRUCTION = 512

app = FastAPI(title="rlsys policy server")


class BadRequest(ValueError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_request(body: Any, spec: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, str]:
    """Validate one request object -> (images uint8 [C, S, S, 3], proprio float32 [P], instruction)."""
    if not isinstance(body, dict):
        raise BadRequest(400, "request: expected a JSON object with images, proprio, instruction")
    missing = [k for k in ("images", "proprio", "instruction") if k not in body]
    if missing:
        raise BadRequest(400, f"request: missing field(s) {missing}")
    shape = (len(spec["cameras"]), spec["image_size"], spec["image_size"], 3)
    raw = body["images"]
    try:
        if isinstance(raw, dict) and "b64" in raw:
            data = base64.b64decode(raw["b64"], validate=True)
            if len(data) != int(np.prod(shape)):
                raise BadRequest(422, f"images.b64: {len(data)} bytes, expected {int(np.prod(shape))} for {shape}")
            images = np.frombuffer(data, np.uint8).reshape(shape)
        else:
            arr = np.asarray(raw)
            if arr.shape != shape:
                raise BadRequest(422, f"images: shape {arr.shape}, expected {shape} (cameras {spec['cameras']})")
            if not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() > 255:
                raise BadRequest(422, "images: expected integers in 0..255")
            images = arr.astype(np.uint8)
    except (binascii.Error, ValueError, TypeError) as e:
        if isinstance(e, BadRequest):
            raise
        raise BadRequest(422, f"images: could not decode ({e})") from e
    proprio = np.asarray(body["proprio"])
    if proprio.shape != (spec["proprio_dim"],) or not np.issubdtype(proprio.dtype, np.number):
        raise BadRequest(422, f"proprio: expected {spec['proprio_dim']} numbers, got shape {proprio.shape}")
    if not np.all(np.isfinite(proprio)):
        raise BadRequest(422, "proprio: contains NaN or inf")
    text = body["instruction"]
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_INSTRUCTION:
        raise BadRequest(422, f"instruction: expected a non-empty string of at most {MAX_INSTRUCTION} characters")
    return images, proprio.astype(np.float32), text


@serve.deployment(max_ongoing_requests=256)
@serve.ingress(app)
class PolicyServer:
    def __init__(self, checkpoint: str, max_body_bytes: int = MAX_BODY_BYTES, seed: int = 0,
                 openpi_keys: OpenPIKeys | None = None) -> None:
        torch.set_num_threads(1)
        self.policy, env_cfg, emb, meta = load_policy(checkpoint)
        self.policy.eval()
        self.builder = ObservationBuilder(self.policy.cfg, emb)
        self.seed = seed
        self.max_body = max_body_bytes
        self.version = int(meta.get("version", 0))
        self.spec = {"cameras": list(env_cfg.cameras), "image_size": env_cfg.image_size,
                     "proprio_dim": emb.proprio_dim, "action_dim": emb.action_dim,
                     "action_names": list(emb.action_names), "horizon": self.policy.cfg.action_horizon,
                     "execute_steps": self.policy.cfg.exec_horizon,
                     "control_hz": emb.control_hz, "robot": emb.robot, "env": env_cfg.name}
        self.openpi = OpenPIAdapter(self.spec, openpi_keys or OpenPIKeys())

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def infer(self, items: list[tuple[np.ndarray, np.ndarray, str]]) -> list[list[list[float]]]:
        obs = self.builder(np.stack([i[0] for i in items]), np.stack([i[1] for i in items]), [i[2] for i in items])
        sampler = ODE()
        with torch.no_grad():
            inputs = self.policy.denoise_inputs(obs, sampler)
            # every row starts from the server's one seeded noise: answers do not depend on the batch
            x0 = self.policy.draw_noise(1, sampler, torch.Generator().manual_seed(self.seed))[1]
            inputs["x0"] = x0.expand(len(items), -1, -1).to(inputs["x0"].device, inputs["x0"].dtype).contiguous()
            actions = self.policy.denoise(inputs, sampler)["actions"].float().cpu().numpy()
        a = actions[:, :, : self.spec["action_dim"]]
        return [a[i].tolist() for i in range(len(items))]

    async def _act(self, body: Any) -> dict[str, Any]:
        actions = await self.infer(parse_request(body, self.spec))
        return {"actions": actions, "version": self.version}

    def _too_big(self, size: int) -> JSONResponse:
        return JSONResponse({"error": f"body of {size} bytes exceeds the server's max_body_bytes {self.max_body}"},
                            status_code=413)

    @app.get("/spec")
    async def get_spec(self) -> dict[str, Any]:
        return self.spec

    @app.post("/act")
    async def act(self, request: Request) -> JSONResponse:
        length = request.headers.get("content-length")
        declared = int(length) if length is not None and length.isdigit() else None
        if declared is not None and declared > DRAIN_FACTOR * self.max_body:
            # Too big even to read and drop: answer now; the client may see the connection close.
            return self._too_big(declared)
        chunks, size = [], 0
        async for part in request.stream():
            size += len(part)
            if size > DRAIN_FACTOR * self.max_body:
                return self._too_big(size)
            if size <= self.max_body:
                chunks.append(part)
        if size > self.max_body:
            # Read to the end (and dropped) before answering: a client still sending its body would
            # otherwise meet a closed socket (broken pipe) instead of this 413.
            return self._too_big(size)
        try:
            body = json.loads(b"".join(chunks))
        except ValueError as e:
            return JSONResponse({"error": f"body is not JSON: {e}"}, status_code=400)
        try:
            return JSONResponse(await self._act(body))
        except BadRequest as e:
            return JSONResponse({"error": str(e)}, status_code=e.status)

    @app.websocket("/ws")
    async def ws(self, websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            while True:
                text = await websocket.receive_text()
                if len(text) > self.max_body:
                    await websocket.send_json({"error": f"message exceeds {self.max_body} bytes", "status": 413})
                    continue
                try:
                    await websocket.send_json(await self._act(json.loads(text)))
                except BadRequest as e:
                    await websocket.send_json({"error": str(e), "status": e.status})
                except ValueError as e:
                    await websocket.send_json({"error": f"message is not JSON: {e}", "status": 400})
        except WebSocketDisconnect:
            return


    @app.websocket("/")
    async def openpi_ws(self, websocket: WebSocket) -> None:
        """openpi's protocol: metadata first, then observation -> {"actions": [H, A]} per message."""
        await websocket.accept()
        await websocket.send_bytes(packb(self.openpi.metadata()))
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                data = message.get("bytes")
                if data is None:
                    await websocket.send_text("400: expected a binary msgpack observation, got a text frame")
                    continue
                if len(data) > self.max_body:
                    await websocket.send_text(f"413: message of {len(data)} bytes exceeds {self.max_body}")
                    continue
                try:
                    images, proprio, prompt = self.openpi.parse(unpackb(data))
                    actions = await self.infer((images, proprio, prompt))
                    await websocket.send_bytes(packb({"actions": np.asarray(actions, np.float32)}))
                except ProtocolError as e:
                    await websocket.send_text(f"422: {e}")
                except (ValueError, TypeError) as e:  # not msgpack, or not the array encoding
                    await websocket.send_text(f"400: message is not an openpi msgpack observation ({e})")
        except WebSocketDisconnect:
            return


SLOW_MACHINE_ENV = {
    # Serve's defaults (5 s proxy readiness, 10 s health checks) kill the HTTP proxy in a loop on
    # a busy 2-core machine where it takes longer to start; these only matter before Ray starts.
    "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60",
    "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "60",
}


def prepare_env() -> None:
    import os

    for k, v in SLOW_MACHINE_ENV.items():
        os.environ.setdefault(k, v)


def start(checkpoint: str, host: str = "127.0.0.1", port: int = 8000, name: str = "rlsys",
          openpi_keys: OpenPIKeys | None = None) -> Any:
    """Start Serve on ``host:port`` (loopback by default) and deploy the policy; returns the handle.
    ``openpi_keys``: which observation keys of an openpi client are which (default: its LIBERO client's)."""
    import ray

    prepare_env()
    if not ray.is_initialized():
        ray.init(include_dashboard=False, _node_ip_address="127.0.0.1")
    serve.start(http_options={"host": host, "port": port})
    return serve.run(PolicyServer.bind(checkpoint, openpi_keys=openpi_keys), name=name, route_prefix="/")
