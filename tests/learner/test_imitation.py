"""Imitation of the policy's own successes (``rlsys.learner.imitation``): the success memory's
bookkeeping across segments, the imitation loss inside PPO's steps and the imitation-only steps of
``ppo_rft``, and ``rft`` (those steps alone)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from kit import read_metrics, small_cfg
from kit import rollout as real_rollout

from rlsys import metrics as M
from rlsys.config import ConfigError, load_config
from rlsys.learner.imitation import SuccessMemory
from rlsys.learner.learner import Learner
from rlsys.policy.flow_policy import FlowPolicy
from rlsys.weights import load_numpy_state, state_to_numpy


@pytest.fixture(scope="module")
def rollout(tmp_path_factory):
    """Two consecutive real rollout segments (2 envs x 3 chunk-steps) and the rollout weights."""
    cfg = small_cfg(tmp_path_factory.mktemp("sil"), "algo.critic_warmup_iters=0", "algo.epochs=10",
                    "optim.actor_lr=3e-3", "imitation.demos=false", "imitation.lr=3e-3", "imitation.image_shift=0",
                    "imitation.train_backbone=false")
    segs, engine = real_rollout(cfg, segments=2)
    return cfg, segs, state_to_numpy(engine.policy)


def with_sections(cfg, **sections):
    """``cfg`` with fields of its sections replaced: ``with_sections(cfg, algo={"name": "rft"})``."""
    return dataclasses.replace(cfg, **{k: dataclasses.replace(getattr(cfg, k), **v) for k, v in sections.items()})


def make_learner(cfg, state, base=None, **sections) -> Learner:
    c = with_sections(cfg, **sections)
    policy = FlowPolicy(c.policy)
    load_numpy_state(policy, state)
    return Learner(c, policy, demo_frames=base)


def demo_base(s1):
    """Four of the segment's frames with shifted actions: a stand-in demo set to imitate."""
    rows = np.array([0, 1, 2, 3])
    return (s1.obs.index(rows), np.array(s1.chunk.actions[rows]) + 0.3, np.ones((4, s1.exec_mask.shape[-1]), bool))

def relabel(seg, ids, terminated=None, success=None, valid=None):
    """The segment with its episode bookkeeping replaced ([T, N] arrays, time-major)."""
    z = np.zeros(seg.shape, bool)
    return dataclasses.replace(
        seg, episode_ids=np.asarray(ids, np.int64),
        terminated=z if terminated is None else np.asarray(terminated, bool),
        truncated=z, success=z if success is None else np.asarray(success, bool),
        valid=np.ones(seg.shape, bool) if valid is None else np.asarray(valid, bool),
        exec_mask=np.ones_like(seg.exec_mask))


def test_memory_keeps_whole_successful_episodes_across_segments(rollout):
    _, (s1, s2), _ = rollout
    # env 0: episode 10 runs through segment 1 and succeeds at t=1 of segment 2, then episode 11 starts;
    # env 1: episode 20 fails at t=1 of segment 1; episode 21 is dropped (NaN) in segment 2
    a = relabel(s1, [[10, 20], [10, 20], [10, 21]], terminated=[[0, 0], [0, 1], [0, 0]])
    b = relabel(s2, [[10, 21], [10, 21], [11, 21]], terminated=[[0, 0], [1, 0], [0, 0]],
                success=[[0, 0], [1, 0], [0, 0]], valid=[[1, 0], [1, 1], [1, 1]])
    mem = SuccessMemory(capacity=100)
    mem.add(a, iteration=0)
    assert mem.size == 0 and set(mem.pending) == {10, 21}  # outcomes not known yet
    mem.add(b, iteration=1)
    assert mem.episodes_added == 1 and mem.size == 5  # episode 10: 3 + 2 chunks, nothing else
    assert set(mem.pending) == {11}  # 20 failed, 21 was dropped
    rows1, rows2 = np.array([0, 2, 4]), np.array([0, 2])  # env 0's rows, time-major
    want = np.concatenate([s1.chunk.actions[rows1], s2.chunk.actions[rows2]])
    obs, actions, valid = mem.sample(64, np.random.default_rng(0))
    assert valid.all() and actions.shape == (64, *want.shape[1:])
    assert all(any(np.array_equal(x, w) for w in want) for x in actions)  # only episode 10's chunks
    assert {x.tobytes() for x in actions} == {w.tobytes() for w in want}  # and all of them
    img = np.concatenate([s1.obs.images[rows1], s2.obs.images[rows2]])
    for x, o in zip(actions, obs.images):  # each chunk with its own observation
        assert np.array_equal(o, img[[np.array_equal(x, w) for w in want].index(True)])


def test_memory_is_a_bounded_fifo_and_forgets_lost_episodes(rollout):
    _, (s1, _), _ = rollout
    mem = SuccessMemory(capacity=4, max_pending_iters=2)
    done = [[0, 0], [0, 0], [1, 1]]
    mem.add(relabel(s1, [[1, 2], [1, 2], [1, 2]], terminated=done, success=done), iteration=0)
    # both succeeded (6 chunks > 4): episode 1 went in first and was evicted whole; episode 2 stays
    assert mem.size == 3 and mem.episodes_added == 2
    kept = {x.tobytes() for x in mem.sample(64, np.random.default_rng(0))[1]}
    assert kept == {s1.chunk.actions[i].tobytes() for i in (1, 3, 5)}
    mem.add(relabel(s1, [[3, 4], [3, 4], [3, 4]], terminated=done, success=done), iteration=1)
    assert mem.size == 3 and mem.episodes_added == 4
    mem.add(relabel(s1, [[5, 6], [5, 6], [5, 6]]), iteration=2)
    assert set(mem.pending) == {5, 6}
    mem.add(relabel(s1, [[7, 8], [7, 8], [7, 8]]), iteration=5)  # 5 and 6 never ended: forgotten
    assert set(mem.pending) == {7, 8}
    with pytest.raises(ValueError, match="empty"):
        SuccessMemory(10).sample(1, np.random.default_rng(0))


def test_memory_state_round_trips_through_a_checkpoint(rollout, tmp_path):
    """The FIFO, the episodes still waiting for their end and the RNGs survive a checkpoint: a learner
    restored from it draws the same batches and finishes the pending episode as the original does."""
    from safetensors.numpy import load_file, save_file

    cfg, (s1, s2), state = rollout
    end_a, end_b = [[0, 0], [0, 1], [0, 0]], [[0, 0], [1, 0], [0, 0]]
    a = relabel(s1, [[10, 20], [10, 20], [10, 21]], terminated=end_a, success=end_a)
    b = relabel(s2, [[10, 21], [10, 21], [11, 21]], terminated=end_b, success=end_b)
    one = make_learner(cfg, state, algo={"name": "rft"})
    one.algo.observe([a], 0)
    assert one.algo.imitation.memory.size == 2 and set(one.algo.imitation.memory.pending) == {10, 21}
    arrays, scalars = one.imitation_state()
    save_file(arrays, str(tmp_path / "imitation.safetensors"))  # what a checkpoint writes
    two = make_learner(cfg, state, algo={"name": "rft"})
    two.load_imitation_state(load_file(str(tmp_path / "imitation.safetensors")), scalars)
    for learner in (one, two):
        learner.algo.observe([b], 1)  # episode 10 ends in success: its chunks from both segments enter
    m1, m2 = one.algo.imitation.memory, two.algo.imitation.memory
    assert (m1.size, m1.episodes_added, set(m1.pending)) == (m2.size, m2.episodes_added, set(m2.pending)) == (
        7, 2, {11, 21})
    for _ in range(3):  # the same draws, image for image
        x, y = one.algo.imitation.memory.sample(8, one.algo.imitation.rng), two.algo.imitation.memory.sample(
            8, two.algo.imitation.rng)
        assert all(np.array_equal(p, q) for p, q in zip((x[0].images, x[1], x[2]), (y[0].images, y[1], y[2])))
    assert torch.equal(one.algo.imitation.generator.get_state(), two.algo.imitation.generator.get_state())


def fm_loss(policy: FlowPolicy, obs, actions, valid) -> float:
    with torch.no_grad():
        return float(policy.sft_loss(obs, actions, valid, "beta", torch.Generator().manual_seed(1)))


def test_imitation_loss_inside_ppo_steps_fits_the_successful_chunks(rollout):
    """The same PPO update without and with imitation (``ppo`` vs ``ppo_rft`` with no separate steps):
    with it, the flow-matching loss on the successful episode's own chunks falls well below where PPO
    alone leaves it; the metrics count the memory and reach metrics.jsonl."""
    cfg, (s1, _), state = rollout
    ok = [[0, 0], [0, 0], [1, 0]]
    seg = relabel(s1, [[1, 2], [1, 2], [1, 2]], terminated=ok, success=ok)
    rows = np.array([0, 2, 4])
    target = (seg.obs.index(rows), seg.chunk.actions[rows], np.ones((3, seg.exec_mask.shape[-1]), bool))
    before = fm_loss(make_learner(cfg, state).policy, *target)
    after, metrics = {}, {}
    for name in ("ppo", "ppo_rft"):
        lr = make_learner(cfg, state, algo={"name": name}, imitation={"steps": 1, "lr": 1e-9, "image_shift": 0})
        metrics[name] = lr.update([seg])
        after[name] = fm_loss(lr.policy, *target)
    assert "sil_loss" not in metrics["ppo"] and metrics["ppo_rft"]["sil_episodes"] == 1
    assert metrics["ppo_rft"]["sil_memory_chunks"] == 3 and metrics["ppo_rft"]["sil_loss"] > 0
    assert {k for k in metrics["ppo_rft"] if k.startswith("sil_") and k != "sil_grad_norm"} <= set(M.LEARNER_KEYS)
    assert after["ppo_rft"] < 0.9 * min(before, after["ppo"]), (before, after)


def test_imitation_settings_are_checked():
    for bad in ("imitation.coef=-1", "imitation.capacity=0", "imitation.batch=0", "imitation.steps=0",
                "imitation.image_shift=-1", "imitation.lr=-1e-4"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            load_config("tabletop_ppo", [bad])


def test_component_names_are_checked_when_the_config_is_read():
    """An unknown algorithm, sampler or model fails in load_config, naming the known ones, not
    after Ray, the run directory and the few-shot SFT have started."""
    for key, bad, known in (("algo.name", "pppo", "grpo, ppo, ppo_rft, rft"),
                            ("sampler.name", "sde", "flow_noise, flow_sde, ode"),
                            ("policy.model", "big", "pi0, pi05, tiny")):
        with pytest.raises(ConfigError, match=f"{key}: got '{bad}'; allowed: one of {known}"):
            load_config("tabletop_ppo", [f"{key}={bad}"])


def test_imitation_steps_run_past_target_kl_on_the_demo_base(rollout):
    """With no success in the batch, a demo base alone feeds imitation; the imitation steps run after
    the PPO epochs even where target_kl ended those, and fit the demo chunks."""
    cfg, (s1, _), state = rollout
    seg = relabel(s1, [[1, 2], [1, 2], [1, 2]])  # no episode ends: nothing enters the FIFO
    base = demo_base(s1)
    lr = make_learner(cfg, state, base, algo={"name": "ppo_rft", "target_kl": 1e-9}, imitation={"steps": 20})
    before = fm_loss(lr.policy, *base)
    m = lr.update([seg])
    assert m["epochs_run"] < cfg.algo.epochs  # target_kl stopped PPO's steps...
    assert m["sil_steps_run"] == 20 and m["sil_memory_chunks"] == 0  # ...not these
    assert 0 < m["sil_seconds"] < m["update_seconds"]
    assert fm_loss(lr.policy, *base) < 0.9 * before


def test_imitation_steps_run_while_the_critic_warms_up(rollout):
    """The imitation-only steps use no advantage, so they run from the first update, as rft's do, while
    PPO's steps still train the critic alone (critic_warmup_iters); then PPO's steps join them."""
    cfg, (s1, _), state = rollout
    seg = relabel(s1, [[1, 2], [1, 2], [1, 2]])  # no episode ends: the demo base feeds imitation
    base = demo_base(s1)
    lr = make_learner(cfg, state, base, algo={"name": "ppo_rft", "critic_warmup_iters": 1}, imitation={"steps": 4})
    before = fm_loss(lr.policy, *base)
    m = lr.update([seg])
    assert m["epochs_run"] == 0 and m["critic_epochs_run"] == cfg.algo.epochs  # warm-up: PPO's steps fit the critic
    assert m["sil_steps_run"] == 4 and fm_loss(lr.policy, *base) < before  # the imitation steps ran
    seg = dataclasses.replace(seg, versions=np.full_like(seg.versions, lr.version))
    m = lr.update([seg])
    assert m["epochs_run"] > 0 and m["sil_steps_run"] == 4


def test_imitation_lr_moves_the_policy_as_that_actor_lr_would_and_only_in_its_steps(rollout):
    """imitation.lr: an imitation step at actor_lr 1e-5 with imitation.lr 3e-4 changes the weights
    exactly as the same step at actor_lr 3e-4 does (same memory, same draws); the optimiser's lrs are
    back at their own values afterwards, so PPO's steps keep actor_lr."""
    cfg, (s1, _), state = rollout
    base = demo_base(s1)
    moved, learners = {}, {}
    for name, actor_lr, lr in (("imitation_lr", 1e-5, 3e-4), ("actor_lr", 3e-4, 0.0), ("neither", 1e-5, 0.0)):
        learners[name] = make_learner(cfg, state, base, algo={"name": "rft"}, optim={"actor_lr": actor_lr},
                                      imitation={"steps": 1, "lr": lr, "train_backbone": False})
        learners[name].update([relabel(s1, [[1, 2], [1, 2], [1, 2]])])
        after = state_to_numpy(learners[name].policy)
        moved[name] = {k: after[k] - state[k] for k in state}
    for k in state:
        np.testing.assert_allclose(moved["imitation_lr"][k], moved["actor_lr"][k], rtol=1e-5, atol=1e-9)
    step = {n: sum(float(np.abs(d).sum()) for d in m.values()) for n, m in moved.items()}
    assert step["imitation_lr"] > 10 * step["neither"] > 0, step  # the setting changed the step...
    assert [g["lr"] for g in learners["imitation_lr"].optimizer.param_groups] == [1e-5, cfg.optim.critic_lr]  # ...only


def test_imitation_trains_the_backbone_in_its_own_steps_only(rollout):
    """imitation.train_backbone with a frozen policy-gradient backbone: PPO's steps (and the imitation
    loss inside them) leave the backbone as it was, on the prefix cached once per update (first
    minibatch at ratio 1); the imitation-only steps move it, exactly as they do with
    optim.train_backbone (same lr, same draws)."""
    cfg, (s1, _), state = rollout
    base = demo_base(s1)
    seg = relabel(s1, [[1, 2], [1, 2], [1, 2]])  # no episode ends: the demo base feeds imitation
    backbone = [k for k in state if k.startswith("model.backbone.")]
    expert = [k for k in state if k.startswith("model.expert.")]
    assert backbone and expert

    def run(name="ppo_rft", steps=2, **sections):
        lr = make_learner(cfg, state, base, algo={"name": name}, imitation={"steps": steps, **sections.pop("im", {})},
                          **sections)
        m = lr.update([seg])
        trainable = {p.requires_grad for p in lr.policy.model.backbone.parameters()}
        assert trainable == {lr.cfg.optim.train_backbone}  # frozen again for PPO's steps
        after = state_to_numpy(lr.policy)
        return m, {k: after[k] - state[k] for k in state}

    m, moved = run(im={"train_backbone": False})
    assert m["epochs_run"] > 0 and m["first_minibatch_ratio_dev"] < 1e-5
    assert not any(moved[k].any() for k in backbone) and any(moved[k].any() for k in expert)
    m, moved = run(im={"train_backbone": True})
    assert m["sil_steps_run"] == 2 and any(moved[k].any() for k in backbone)
    _, rft_im_backbone = run(name="rft", im={"train_backbone": True})
    _, rft_pg_backbone = run(name="rft", im={"train_backbone": False}, optim={"train_backbone": True})
    _, rft_frozen = run(name="rft", im={"train_backbone": False})
    assert any(rft_im_backbone[k].any() for k in backbone) and not any(rft_frozen[k].any() for k in backbone)
    for k in state:
        np.testing.assert_allclose(rft_im_backbone[k], rft_pg_backbone[k], rtol=1e-5, atol=1e-9)


def test_rft_update_fits_successes_and_nothing_else(rollout):
    """``algo.name=rft``: with no success (and no demos) the update leaves the weights and the version;
    once an episode succeeds, its imitation steps fit that episode's chunks with no PPO loss and no critic."""
    cfg, (s1, _), state = rollout
    lr = make_learner(cfg, state, algo={"name": "rft"}, imitation={"steps": 40, "lr": 3e-3, "image_shift": 0})
    m = lr.update([relabel(s1, [[1, 2], [1, 2], [1, 2]], terminated=[[0, 0], [0, 0], [0, 1]])])  # 2 fails
    assert m["skipped"] == 1 and lr.version == 0 and m["sil_steps_run"] == 0
    assert all(np.array_equal(v, state[k]) for k, v in state_to_numpy(lr.policy).items())
    ok = [[0, 0], [0, 0], [1, 0]]
    seg = relabel(s1, [[3, 4], [3, 4], [3, 4]], terminated=ok, success=ok)
    rows = np.array([0, 2, 4])
    target = (seg.obs.index(rows), seg.chunk.actions[rows], np.ones((3, seg.exec_mask.shape[-1]), bool))
    before = fm_loss(lr.policy, *target)
    m = lr.update([seg])
    assert lr.version == 1 and m["sil_steps_run"] == 40 and m["sil_memory_chunks"] == 3
    assert not {"policy_loss", "value_loss", "approx_kl", "skipped"} & set(m)
    assert fm_loss(lr.policy, *target) < 0.9 * before
    after = state_to_numpy(lr.policy)
    assert all(np.array_equal(after[k], state[k]) for k in state if k.startswith("value_head."))  # no critic


def test_image_shift_augments_the_memory_images(rollout):
    """imitation.image_shift: the imitation batch sees SFT's random-shift augmentation of the stored
    images (0: the stored images exactly)."""
    cfg, (s1, _), state = rollout
    ok = [[0, 0], [0, 0], [1, 0]]
    seg = relabel(s1, [[1, 2], [1, 2], [1, 2]], terminated=ok, success=ok)
    stored = [seg.obs.images[i] for i in (0, 2, 4)]
    for shift in (0, 4):
        lr = make_learner(cfg, state, algo={"name": "rft"}, imitation={"image_shift": shift})
        lr.algo.imitation.memory.add(seg, 0)
        seen: list[np.ndarray] = []

        def spy(obs, *args, fit=lr.policy.sft_loss, seen=seen, **kw):  # records what the loss is given
            seen.append(obs.images)
            return fit(obs, *args, **kw)

        lr.policy.sft_loss = spy
        assert float(lr.algo.imitation.loss()) > 0
        same = [any(np.array_equal(x, m) for m in stored) for x in seen[0]]
        assert all(same) if shift == 0 else sum(same) < len(same) / 2, shift


def test_memory_draws_from_base_and_fifo_padding_narrow_demo_actions(rollout):
    _, (s1, _), _ = rollout
    k = s1.chunk.actions.shape[-1]
    base = (s1.obs.index(np.array([1, 3])), np.full((2, s1.chunk.actions.shape[1], k - 2), 5.0, np.float32),
            np.ones((2, s1.exec_mask.shape[-1]), bool))  # an embodiment narrower than the policy's K
    mem = SuccessMemory(capacity=10, base=base)
    assert mem.size == 0 and mem.available == 2
    done = [[0, 0], [0, 0], [1, 0]]
    mem.add(relabel(s1, [[1, 2], [1, 2], [1, 2]], terminated=done, success=done), iteration=0)
    assert mem.size == 3 and mem.available == 5
    _, actions, _ = mem.sample(400, np.random.default_rng(0))
    demo = (actions[..., 0] == 5.0).all(-1)
    assert actions.shape[-1] == k and (actions[demo][..., k - 2:] == 0).all()  # padded with zeros
    assert 0.25 < demo.mean() < 0.55  # uniform over 2 demo + 3 FIFO chunks


def test_imitation_demo_folder_is_resolved_or_named(tmp_path, init_ckpt):
    from rlsys.train import imitation_demo_dir, train

    cfg = small_cfg(tmp_path, "algo.name=ppo_rft", f"init_checkpoint={init_ckpt}")
    with pytest.raises(ValueError, match="names no demo folder"):  # its meta is {"stage": "test"}
        imitation_demo_dir(cfg, tmp_path)
    cfg = small_cfg(tmp_path / "runs", "algo.name=ppo_rft", f"sft.demos={tmp_path / 'nope'}")
    with pytest.raises(FileNotFoundError, match="nope.*sft.demos"):
        imitation_demo_dir(cfg, tmp_path)
    with pytest.raises(FileNotFoundError, match="nope"):  # train() says so before any run directory
        train(cfg)
    assert not (tmp_path / "runs").exists()
    cfg = small_cfg(tmp_path, "algo.name=ppo_rft")
    with pytest.raises(FileNotFoundError, match="few-shot SFT"):
        imitation_demo_dir(cfg, tmp_path)


@pytest.mark.parametrize("name", ["ppo_rft", "rft"])
def test_train_with_imitation_and_demos_on_a_local_ray(ray_local, init_ckpt, tmp_path, name):
    """End to end: the demo frames travel to the learner actor and the imitation steps run every
    iteration; rft takes no policy-gradient step at all."""
    from rlsys.envs.demos import expert_demos
    from rlsys.train import train

    demos = tmp_path / "demos"
    cfg = small_cfg(tmp_path, "placement.mode=collocated", f"init_checkpoint={init_ckpt}", f"algo.name={name}",
                    "imitation.steps=3", "imitation.batch=8", f"sft.demos={demos}", "algo.critic_warmup_iters=0")
    expert_demos(cfg.env, str(demos), 2)
    run_dir = Path(train(cfg)["run_dir"])
    rows = read_metrics(run_dir)
    assert [r["learner/sil_steps_run"] for r in rows] == [3, 3]
    assert all(r["learner/sil_loss"] > 0 and 0 < r[M.SIL_S] < r[M.UPDATE_S] for r in rows)
    assert all((M.POLICY_LOSS in r) == (name == "ppo_rft") for r in rows)
    assert name in run_dir.name
