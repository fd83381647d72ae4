"""Small Python client for the rlsys policy server (HTTP JSON; websocket if `websockets` is present).

    from rlsys.deploy.client import PolicyClient
    client = PolicyClient("http://127.0.0.1:8000")
    actions = client.act(images, proprio, "pick up the red cube")   # [H, A]
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from typing import Any

import numpy as np


class ServerError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class PolicyClient:
    def __init__(self, url: str = "http://127.0.0.1:8000", timeout: float = 30.0) -> None:
        self.url, self.timeout = url.rstrip("/"), timeout

    def _request(self, path: str, body: bytes | None = None) -> Any:
        req = urllib.request.Request(self.url + path, data=body, method="POST" if body is not None else "GET",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise ServerError(e.code, json.loads(e.read() or b"{}").get("error", e.reason)) from None
        except (ConnectionError, urllib.error.URLError) as e:
            reason = getattr(e, "reason", e)
            if body is not None and isinstance(reason, ConnectionError):
                raise ConnectionError(f"{self.url}{path}: the server closed the connection while a body of "
                                      f"{len(body)} bytes was being sent ({reason}); it answers 413 to bodies "
                                      "over its max_body_bytes and drops the connection for far larger ones") from e
            raise

    def spec(self) -> dict[str, Any]:
        return self._request("/spec")

    @staticmethod
    def payload(images: np.ndarray, proprio: np.ndarray, instruction: str) -> dict[str, Any]:
        images = np.ascontiguousarray(images, dtype=np.uint8)
        return {"images": {"b64": base64.b64encode(images.tobytes()).decode()},
                "proprio": np.asarray(proprio, np.float64).tolist(), "instruction": instruction}

    def act(self, images: np.ndarray, proprio: np.ndarray, instruction: str) -> np.ndarray:
        """images uint8 [C, S, S, 3], proprio [P] -> actions float32 [H, A]."""
        out = self._request("/act", json.dumps(self.payload(images, proprio, instruction)).encode())
        return np.asarray(out["actions"], np.float32)
