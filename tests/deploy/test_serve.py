"""Ray Serve policy server on loopback: HTTP JSON and websocket, batching, 4xx on bad input."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import numpy as np
import pytest
import ray
import torch

from rlsys.checkpoint import save_policy
from rlsys.config import load_config
from rlsys.envs.tabletop.env import EMBODIMENT
from rlsys.policy.flow_policy import FlowPolicy

PORT = 18431


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from ray import serve

    from rlsys.deploy.serve import prepare_env, start

    cfg = load_config("tabletop_sft", ["env.cameras=[agentview]", "policy.num_cameras=1", "env.image_size=32",
                                       "policy.image_size=32", "policy.width=32", "policy.heads=2"])
    torch.manual_seed(0)
    ck = tmp_path_factory.mktemp("serve") / "ck"
    save_policy(ck, FlowPolicy(cfg.policy), cfg.env, EMBODIMENT, meta={"version": 3})
    prepare_env()
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    start(str(ck), port=PORT)
    yield f"http://127.0.0.1:{PORT}"
    serve.shutdown()
    ray.shutdown()


def _obs():
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (1, 32, 32, 3), dtype=np.uint8), rng.normal(size=8)


def test_spec_and_act_over_http(server):
    from rlsys.deploy.client import PolicyClient

    client = PolicyClient(server)
    spec = client.spec()
    assert spec["cameras"] == ["agentview"] and spec["action_dim"] == 7 and spec["horizon"] == 5
    images, proprio = _obs()
    a = client.act(images, proprio, "pick up the red cube")
    b = client.act(images, proprio, "pick up the red cube")
    assert a.shape == (5, 7) and np.isfinite(a).all()
    # nested-list images give the same kind of answer
    body = json.dumps({"images": images.tolist(), "proprio": proprio.tolist(), "instruction": "x"}).encode()
    with urllib.request.urlopen(urllib.request.Request(server + "/act", data=body), timeout=30) as r:
        out = json.loads(r.read())
    assert np.asarray(out["actions"]).shape == (5, 7) and out["version"] == 3
    np.testing.assert_array_equal(a, b)  # the same observation, the same actions


def test_the_same_observation_always_gets_the_same_actions(server):
    """Whatever else is in its batch: 16 concurrent requests of two observations, interleaved."""
    from concurrent.futures import ThreadPoolExecutor

    from rlsys.deploy.client import PolicyClient

    client = PolicyClient(server)
    images, proprio = _obs()
    other = (255 - images, -proprio)
    alone = client.act(images, proprio, "pick up the red cube")
    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda i: client.act(*((images, proprio) if i % 2 else other), "pick up the red cube"),
                             range(16)))
    assert all(np.array_equal(o, alone) for o in outs[1::2])
    assert all(np.array_equal(o, outs[0]) for o in outs[0::2])


@pytest.mark.parametrize("body,status,match", [
    (b"not json", 400, "not JSON"),
    (json.dumps({"proprio": [0] * 8, "instruction": "x"}).encode(), 400, "missing field"),
    (json.dumps({"images": [[[0, 0, 0]]], "proprio": [0] * 8, "instruction": "x"}).encode(), 422, "images: shape"),
    (json.dumps({"images": {"b64": "AAAA"}, "proprio": [0] * 8, "instruction": "x"}).encode(), 422, "bytes, expected"),
    (json.dumps({"images": {"b64": ""}, "proprio": [0] * 3, "instruction": "x"}).encode(), 422, None),
    (b"{" + b" " * (5 * 1024 * 1024) + b"}", 413, "exceeds"),
])
def test_bad_requests_get_4xx_with_a_message(server, body, status, match):
    req = urllib.request.Request(server + "/act", data=body, headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    assert e.value.code == status
    if match:
        assert match in json.loads(e.value.read())["error"]


def test_oversized_bodies_get_413_without_a_length_header_and_through_the_client(server):
    """The server reads an oversized body to the end before answering, so the sender sees the 413."""
    import http.client

    from rlsys.deploy.client import PolicyClient, ServerError

    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
    conn.request("POST", "/act", body=iter([b"{" + b" " * (1 << 20)] * 5 + [b"}"]),
                 headers={"Content-Type": "application/json"}, encode_chunked=True)
    r = conn.getresponse()
    assert r.status == 413 and "max_body_bytes" in json.loads(r.read())["error"]
    conn.close()
    big = np.zeros((1, 1400, 1400, 3), np.uint8)      # 5.9 MB raw, 7.8 MB as base64
    with pytest.raises(ServerError) as e:
        PolicyClient(server).act(big, np.zeros(8), "x")
    assert e.value.status == 413 and "exceeds" in str(e.value)


def test_concurrent_requests_are_batched_and_answered(server):
    from concurrent.futures import ThreadPoolExecutor

    from rlsys.deploy.client import PolicyClient

    client = PolicyClient(server)
    images, proprio = _obs()
    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda i: client.act(images, proprio, f"task {i}"), range(32)))
    assert all(o.shape == (5, 7) for o in outs)


def test_websocket_route(server):
    import websockets

    from rlsys.deploy.client import PolicyClient

    images, proprio = _obs()

    async def talk():
        async with websockets.connect(server.replace("http", "ws") + "/ws") as ws:
            await ws.send(json.dumps(PolicyClient.payload(images, proprio, "pick up the red cube")))
            good = json.loads(await ws.recv())
            await ws.send(json.dumps({"images": [], "proprio": [], "instruction": ""}))
            bad = json.loads(await ws.recv())
            return good, bad

    good, bad = asyncio.run(talk())
    assert np.asarray(good["actions"]).shape == (5, 7)
    assert bad["status"] == 422 and "images" in bad["error"]


def openpi_exchange(url: str, messages: list) -> tuple[dict, list]:
    """A client as openpi's is written (websocket at /, msgpack + numpy): metadata, then one answer per
    message (bytes: an msgpack answer; str: the server's error text)."""
    from websockets.sync.client import connect

    from rlsys.deploy.openpi import packb, unpackb

    with connect(url.replace("http://", "ws://") + "/", max_size=None, compression=None) as ws:
        metadata = unpackb(ws.recv())
        answers = []
        for m in messages:
            ws.send(m if isinstance(m, (bytes, str)) else packb(m))
            reply = ws.recv()
            answers.append(unpackb(reply) if isinstance(reply, bytes) else reply)
    return metadata, answers


def test_openpi_protocol_exchange(server):
    """openpi's protocol: the metadata message on connect, an observation dict in (numpy arrays, the
    LIBERO client's keys, a 224 px image resized to the policy's), {"actions": [H, A]} out; bad
    observations get a text frame naming the key, and the connection goes on serving."""
    rng = np.random.default_rng(0)
    good = {"observation/image": rng.integers(0, 255, (224, 224, 3), dtype=np.uint8),
            "observation/state": rng.normal(size=8).astype(np.float32), "prompt": "lift the red cube"}
    bad_dtype = {**good, "observation/image": good["observation/image"].astype(np.float32)}
    missing = {k: v for k, v in good.items() if k != "prompt"}
    long_state = {**good, "observation/state": np.zeros(20, np.float32)}
    metadata, answers = openpi_exchange(server, [good, bad_dtype, missing, long_state, b"\x00not msgpack", good])
    assert metadata["protocol"] == "openpi" and metadata["image_keys"] == ["observation/image"]
    first, last = answers[0], answers[-1]
    assert isinstance(first["actions"], np.ndarray) and first["actions"].shape == (5, 7)
    assert first["actions"].dtype == np.float32
    assert last["actions"].shape == (5, 7) and np.isfinite(last["actions"]).all()  # still serving
    assert answers[1].startswith("422: observation/image: expected a uint8 array [H, W, 3], got float32")
    assert answers[2].startswith("422: observation: missing keys ['prompt']")
    assert answers[3].startswith("422: observation/state: expected up to 8 numbers")
    assert answers[4].startswith("400: message is not an openpi msgpack observation")
