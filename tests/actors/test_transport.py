"""The zmq hot-path channel: lossless framing of the contracts, request ids, error replies."""

import asyncio
import threading

import numpy as np
import pytest

from rlsys.actors.transport import TransportError, ZmqClient, ZmqServer, pack, unpack
from rlsys.types import ActionChunk, Observation


def fake_obs(b: int = 3) -> Observation:
    rng = np.random.default_rng(0)
    return Observation(images=rng.integers(0, 255, (b, 2, 16, 16, 3), dtype=np.uint8),
                       proprio=rng.normal(size=(b, 8)).astype(np.float32),
                       tokens=rng.integers(0, 100, (b, 12)).astype(np.int64),
                       token_mask=np.ones((b, 12), bool), action_dim=np.full(b, 7, np.int64))


def fake_chunk(b: int, version: int) -> ActionChunk:
    rng = np.random.default_rng(version)
    return ActionChunk(actions=rng.normal(size=(b, 5, 7)).astype(np.float32), action_mask=np.ones((b, 7), bool),
                       chain=rng.normal(size=(b, 5, 5, 7)).astype(np.float32),
                       step_mask=np.eye(4, dtype=bool)[rng.integers(0, 4, b)],
                       logp_steps=rng.normal(size=(b, 5)).astype(np.float32),
                       value=rng.normal(size=b).astype(np.float32), noise_level=np.full(b, 0.5, np.float32),
                       version=version)


def test_pack_unpack_is_lossless():
    obs = fake_obs()
    back = unpack(Observation, [bytes(f) for f in pack(obs)])
    for k in ("images", "proprio", "tokens", "token_mask", "action_dim"):
        np.testing.assert_array_equal(getattr(back, k), getattr(obs, k))
        assert getattr(back, k).dtype == getattr(obs, k).dtype
    c = fake_chunk(3, version=7)
    c2 = unpack(ActionChunk, [bytes(f) for f in pack(c)])
    assert c2.version == 7
    np.testing.assert_array_equal(c2.chain, c.chain)


@pytest.fixture()
def server():
    """A ZmqServer on its own asyncio loop: echoes batch size into the chunk version, fails on b=2."""
    loop = asyncio.new_event_loop()
    box = {}

    async def handler(obs: Observation) -> ActionChunk:
        if obs.batch_size == 2:
            raise ValueError("batch of two refused")
        await asyncio.sleep(0.05 if obs.batch_size == 1 else 0.0)  # out-of-order replies
        return fake_chunk(obs.batch_size, version=obs.batch_size)

    def run():
        asyncio.set_event_loop(loop)
        box["srv"] = ZmqServer("127.0.0.1", Observation, handler)
        box["srv"].start()
        box["ready"].set()
        loop.run_forever()

    box["ready"] = threading.Event()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    box["ready"].wait(10)
    yield box["srv"]

    async def shutdown() -> None:
        box["srv"].close()
        await asyncio.sleep(0)  # let the cancelled serve task finish
        loop.stop()

    asyncio.run_coroutine_threadsafe(shutdown(), loop)
    t.join(5)
    assert not t.is_alive()


def test_requests_in_flight_are_matched_by_id(server):
    client = ZmqClient(server.endpoint, ActionChunk, timeout_s=10)
    slow, fast = client.submit(fake_obs(1)), client.submit(fake_obs(4))
    assert client.wait(fast).version == 4  # the later request answers first
    assert client.wait(slow).version == 1
    with pytest.raises(TransportError, match="batch of two refused"):
        client.wait(client.submit(fake_obs(2)))
    client.close()


def test_silent_peer_times_out():
    client = ZmqClient("tcp://127.0.0.1:9", ActionChunk, timeout_s=0.2)
    with pytest.raises(TransportError, match="no reply"):
        client.wait(client.submit(fake_obs(1)))
    client.close()
