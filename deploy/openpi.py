"""openpi's policy-server protocol, so a robot or benchmark client written for a pi0 server drives an
rlsys policy unchanged: a websocket at ``/``; on connect the server sends its metadata; then each
binary message is an observation dict and each answer ``{"actions": [H, A] float32}``. Messages are
msgpack with numpy arrays as ``{"__ndarray__": True, "data": bytes, "dtype": typestr, "shape": [...]}``
(openpi_client's ``msgpack_numpy`` wire format, written here from its description). A request that
cannot be served gets a text frame naming the key, what was found and what is expected (openpi's
client raises it); the connection stays open.

Which client keys are which (``OpenPIKeys``): by default openpi's LIBERO example client's
``observation/image`` and ``observation/wrist_image`` (the policy's cameras in order),
``observation/state`` and ``prompt``. Images of any size are resized to the policy's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
import torch
from torch.nn import functional as F


def _pack_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind in "VOc":
            raise TypeError(f"cannot send an array of dtype {obj.dtype}")
        return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot send a {type(obj).__name__}")


def _unpack_hook(obj: dict) -> Any:
    if b"__ndarray__" in obj:
        dtype = np.dtype(obj[b"dtype"])
        if dtype.kind in "VOc":  # object arrays would mean pickle: never
            raise ValueError(f"arrays of dtype {dtype} are not accepted")
        return np.ndarray(buffer=obj[b"data"], dtype=dtype, shape=tuple(obj[b"shape"]))
    if b"__npgeneric__" in obj:
        return np.dtype(obj[b"dtype"]).type(obj[b"data"])
    return obj


def packb(obj: Any) -> bytes:
    return msgpack.packb(obj, default=_pack_default, use_bin_type=True)


def unpackb(data: bytes) -> Any:
    return msgpack.unpackb(data, object_hook=_unpack_hook, raw=False, strict_map_key=False)


LIBERO_IMAGE_KEYS = ("observation/image", "observation/wrist_image")


class ProtocolError(ValueError):
    """A request the server cannot serve; the message names the key, what was found and what is expected."""


@dataclass(frozen=True)
class OpenPIKeys:
    """Client observation keys -> the policy's inputs."""

    # the policy's cameras, in order; (): the LIBERO client's, as many as the policy has cameras
    images: tuple[str, ...] = ()
    state: str = "observation/state"
    prompt: str = "prompt"
    resize: bool = True  # images of another size are resized to the policy's

    @classmethod
    def from_json(cls, text: str) -> OpenPIKeys:
        d = json.loads(text)
        unknown = set(d) - {"images", "state", "prompt", "resize"}
        if unknown:
            raise ValueError(f"openpi key map: unknown fields {sorted(unknown)}; allowed images, state, prompt, resize")
        if "images" in d:
            d["images"] = tuple(d["images"])
        return cls(**d)


@dataclass
class OpenPIAdapter:
    """Observation dicts of an openpi client -> (images [C, S, S, 3] uint8, proprio [P], instruction)."""

    spec: dict[str, Any]
    keys: OpenPIKeys = field(default_factory=OpenPIKeys)

    def __post_init__(self) -> None:
        cams = len(self.spec["cameras"])
        self.images = self.keys.images or LIBERO_IMAGE_KEYS[:cams]
        if len(self.images) != cams:
            raise ValueError(f"openpi key map: {len(self.images)} image keys {list(self.images)} for "
                             f"{cams} cameras {self.spec['cameras']}: name one key per camera (--openpi-keys)")

    def metadata(self) -> dict[str, Any]:
        return {**self.spec, "protocol": "openpi", "image_keys": list(self.images),
                "state_key": self.keys.state, "prompt_key": self.keys.prompt}

    def parse(self, obs: Any) -> tuple[np.ndarray, np.ndarray, str]:
        if not isinstance(obs, dict):
            raise ProtocolError(f"observation: expected a map of keys to arrays, got {type(obs).__name__}")
        missing = [k for k in (*self.images, self.keys.state, self.keys.prompt) if k not in obs]
        if missing:
            raise ProtocolError(f"observation: missing keys {missing}; got {sorted(map(str, obs))}")
        s = int(self.spec["image_size"])
        images = np.stack([self._image(k, obs[k], s) for k in self.images])
        state = np.asarray(obs[self.keys.state])
        p = int(self.spec["proprio_dim"])
        if state.ndim != 1 or state.shape[0] > p or state.dtype.kind not in "fiu":
            raise ProtocolError(f"{self.keys.state}: expected up to {p} numbers (1-D), got {state.dtype} {state.shape}")
        state = np.pad(state.astype(np.float32), (0, p - state.shape[0]))
        if not np.isfinite(state).all():
            raise ProtocolError(f"{self.keys.state}: contains NaN or inf")
        prompt = obs[self.keys.prompt]
        if not isinstance(prompt, str) or not prompt.strip():
            raise ProtocolError(f"{self.keys.prompt}: expected a non-empty string, got {type(prompt).__name__}")
        return images, state, prompt

    def _image(self, key: str, img: Any, size: int) -> np.ndarray:
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[-1] != 3:
            found = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
            raise ProtocolError(f"{key}: expected a uint8 array [H, W, 3], got {found}")
        if img.shape[:2] == (size, size):
            return img
        if not self.keys.resize:
            raise ProtocolError(f"{key}: expected [{size}, {size}, 3], got {list(img.shape)} (resizing is off)")
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float()
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return x[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
