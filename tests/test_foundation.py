"""Config, registry, contracts, demo format, checkpoints and the CLI."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rlsys.config import ConfigError, EnvConfig, PolicyConfig, TrainConfig, list_presets, load_config
from rlsys.registry import ENVS, SAMPLERS, Registry
from rlsys.types import ActionChunk, Batch, ContractError, Observation


# ---------------------------------------------------------------- config
def test_presets_load_and_inherit():
    assert {"tabletop_sft", "tabletop_ppo", "tabletop_grpo"} <= set(list_presets())
    cfg = load_config("tabletop_grpo")
    assert cfg.algo.name == "grpo" and cfg.sampler.name == "flow_sde" and cfg.env.name == "tabletop"


@pytest.mark.parametrize("name", list_presets())
def test_every_shipped_preset_validates(name, monkeypatch):
    """A preset users can name must build a valid config (the checks run in the dataclasses)."""
    if name.startswith("robotwin"):  # its interpreter and assets are checked at load
        from test_robotwin import PYTHON, SHARED

        if not Path(PYTHON).is_file() or not (SHARED / "assets").is_dir():
            pytest.skip(f"{name}: no RoboTwin interpreter ({PYTHON}) or assets ({SHARED}) here")
        monkeypatch.setenv("ROBOTWIN_ASSETS_ROOT", str(SHARED))
    cfg = load_config(name)
    assert cfg.env.name and cfg.algo.name


def test_libero_rft_preset_keeps_the_ppo_split():
    rft, ppo = load_config("libero_spatial_rft"), load_config("libero_spatial_ppo")
    assert rft.algo.name == "rft" and rft.algo.sil_demos and rft.algo.sil_steps >= 1
    assert (rft.env, rft.eval_init_state_offset, rft.sft) == (ppo.env, ppo.eval_init_state_offset, ppo.sft)


def test_dotted_overrides_are_typed():
    cfg = load_config("tabletop_ppo", ["algo.actor_lr=3e-4", "env.num_envs=4", "env.cameras=[agentview]",
                                       "policy.num_cameras=1", "sampler.logprob=token_level"])
    assert cfg.algo.actor_lr == pytest.approx(3e-4) and cfg.env.num_envs == 4
    assert cfg.env.cameras == ("agentview",) and cfg.sampler.logprob == "token_level"


@pytest.mark.parametrize("override,match", [
    ("algo.actor_lrr=1", r"algo.actor_lrr: unknown key.*Did you mean 'actor_lr'"),
    ("env.num_envs=two", r"env.num_envs: expected an integer, got 'two'"),
    ("env.num_envs=0", r"env.num_envs: got 0; allowed: >= 1"),
    ("algo.gamma=1.5", r"algo.gamma: got 1.5; allowed: \(0, 1\]"),
    ("sampler.logprob=sum", r"sampler.logprob: got 'sum'; allowed: 'chunk_level' \| 'token_level'"),
    ("policy.num_cameras=3", r"policy.num_cameras: got 3; allowed: the number of env.cameras \(2\)"),
    ("placement.mode=spread", r"placement.mode: got 'spread'"),
    ("env.cameras=agentview", r"env.cameras: expected a list"),
    ("env.init_states=[0,2]", r"env.init_states: env 'tabletop' has no fixed initial states"),
    ("env.init_states=[-1]", r"env.init_states: got \(-1,\); allowed: init-state ids >= 0"),
    ("env.placement=random", r"env.placement: 'random' is defined for simpler_bridge; env 'tabletop' allows 'grid'"),
    ("env.placement=anywhere", r"env.placement: got 'anywhere'; allowed: 'grid' \| 'random'"),
    ("eval_num_envs=0", r"eval_num_envs: got 0; allowed: >= 1"),
    ("policy.critic=mean", r"policy.critic: got 'mean'; allowed: 'pooled' \| 'attention'"),
    ("algo.grpo_scale=std", r"algo.grpo_scale: got 'std'; allowed: 'group' \| 'batch'"),
    ("sampler.stochastic_step=first", r"sampler.stochastic_step: got 'first'; allowed: 'uniform' \| 'last'"),
])
def test_bad_config_names_the_field_and_what_is_allowed(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config("tabletop_ppo", [override])


@pytest.mark.parametrize("overrides,match", [
    (["rollout.overlap=true", "placement.mode=disaggregated"],
     r"rollout.max_staleness: got 0; allowed: >= 1 with rollout.overlap=true"),
    (["rollout.overlap=true", "rollout.max_staleness=1"],
     r"placement.mode: got 'collocated'; allowed: disaggregated or pipelined with rollout.overlap=true"),
])
def test_overlap_needs_staleness_and_an_inference_worker_apart_from_the_learner(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config("tabletop_ppo", overrides)
    ok = load_config("tabletop_ppo", ["rollout.overlap=true", "rollout.max_staleness=1",
                                      "placement.mode=disaggregated"])
    assert ok.rollout.overlap


@pytest.mark.parametrize("overrides,match", [
    (["sampler.stochastic_step=last", "sampler.exclude_last_step=true"],
     r"sampler.stochastic_step: got 'last'; allowed: uniform where exclude_last_step is set"),
    (["sampler.stochastic_step=last", "sampler.name=flow_noise", "policy.noise_head=true"],
     r"sampler.stochastic_step: got 'last'; allowed: uniform with sampler 'flow_noise'"),
])
def test_last_stochastic_step_is_a_flow_sde_choice_that_excludes_exclude_last_step(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config("tabletop_ppo", overrides)
    assert load_config("tabletop_ppo", ["sampler.stochastic_step=last"]).sampler.stochastic_step == "last"


def test_evaluation_init_states_offset_or_listed_split():
    from rlsys.evaluation import episode_init_states

    assert episode_init_states(25, (), 4, 3) == [29, 30, 31]
    assert episode_init_states(0, (1, 2, 5), 2, 3) == [5, 1, 2]  # listed ids, cycled


def test_unknown_preset_suggests():
    with pytest.raises(ConfigError, match="Did you mean 'tabletop_ppo'"):
        load_config("tabletop_pp")


def test_configs_are_frozen():
    cfg = TrainConfig()
    from dataclasses import FrozenInstanceError

    with pytest.raises(FrozenInstanceError):
        cfg.iterations = 3  # type: ignore[misc]


# ---------------------------------------------------------------- registry
def test_registry_lazy_import_and_suggestions():
    assert "tabletop" in ENVS.names() and {"ode", "flow_sde", "flow_noise"} <= set(SAMPLERS.names())
    with pytest.raises(ConfigError, match="Did you mean 'tabletop'"):
        ENVS.get("tabeltop")
    reg = Registry("things")
    reg.register("lazy", "json:dumps")
    assert reg.get("lazy") is json.dumps
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("lazy", "json:loads")


def test_heavy_modules_are_not_imported_until_chosen():
    code = ("import sys, rlsys.registry, rlsys.config; "
            "print('mujoco' in sys.modules, 'rlsys.envs.tabletop.env' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_entry_point_group_adds_envs(monkeypatch):
    from importlib.metadata import EntryPoint

    reg = Registry("envs")
    ep = EntryPoint(name="third_party_sim", value="json:dumps", group="rlsys.envs")
    monkeypatch.setattr("rlsys.registry.entry_points", lambda group: [ep] if group == "rlsys.envs" else [])
    assert "third_party_sim" in reg.names() and reg.get("third_party_sim") is json.dumps


# ---------------------------------------------------------------- contracts
def _obs(b=2):
    return dict(images=np.zeros((b, 2, 64, 64, 3), np.uint8), proprio=np.zeros((b, 8), np.float32),
                tokens=np.zeros((b, 48), np.int64), token_mask=np.zeros((b, 48), bool),
                action_dim=np.full(b, 7, np.int64))


def test_observation_validates_fields():
    Observation(**_obs())
    with pytest.raises(ContractError, match="Observation.images: expected dtype uint8"):
        Observation(**{**_obs(), "images": np.zeros((2, 2, 64, 64, 3), np.float32)})
    with pytest.raises(ContractError, match="Observation.proprio: leading dims"):
        Observation(**{**_obs(), "proprio": np.zeros((3, 8), np.float32)})
    with pytest.raises(ContractError, match="Observation.tokens: expected 2 dims"):
        Observation(**{**_obs(), "tokens": np.zeros((2,), np.int64)})


def test_action_chunk_validates_chain_shape():
    kw = dict(actions=np.zeros((2, 5, 7), np.float32), action_mask=np.ones((2, 7), bool),
              chain=np.zeros((2, 5, 5, 7), np.float32), step_mask=np.zeros((2, 4), bool),
              logp_steps=np.zeros((2, 5), np.float32), value=np.zeros(2, np.float32),
              noise_level=np.zeros(2, np.float32), version=0)
    ActionChunk(**kw)
    with pytest.raises(ContractError, match="S\\+1 states"):
        ActionChunk(**{**kw, "step_mask": np.zeros((2, 3), bool)})
    with pytest.raises(ContractError, match="ActionChunk.value: expected dtype float32"):
        ActionChunk(**{**kw, "value": np.zeros(2, np.float64)})
    chunk = ActionChunk(**kw)
    with pytest.raises(ContractError, match=r"Batch.old_logp: leading dims \(3,\), expected \(2,\)"):
        Batch(obs=Observation(**_obs()), chunk=chunk, exec_mask=np.ones((2, 5), bool),
              old_logp=np.zeros(3, np.float32), old_value=np.zeros(2, np.float32),
              advantages=np.zeros(2, np.float32), returns=np.zeros(2, np.float32),
              loss_mask=np.ones(2, bool), versions=np.zeros(2, np.int64))


# ---------------------------------------------------------------- demos + checkpoints
@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    from rlsys.envs.demos import collect_expert_demos
    from rlsys.envs.tabletop.env import TabletopEnv

    out = tmp_path_factory.mktemp("demos") / "ds"
    env = TabletopEnv(tasks=("lift", "push_left"), image_size=64)
    collect_expert_demos(env, out, 2, "tabletop")
    env.close()
    return out


def test_parallel_demo_workers_merge_into_one_dataset(tmp_path, demo_dir):
    import pyarrow.parquet as pq

    from rlsys.config import EnvConfig
    from rlsys.envs.demos import DEMO_SEED_BASE, collect_expert_demos, expert_demos, load_demos
    from rlsys.envs.tabletop.env import TabletopEnv

    cfg = EnvConfig(name="tabletop", tasks=("lift", "push_left"), image_size=64)
    report = expert_demos(cfg, tmp_path / "par", 3, workers=2)  # two expert processes, seeds interleaved
    assert {t: r["kept"] for t, r in report.items()} == {"lift": 3, "push_left": 3}
    info = json.loads((tmp_path / "par" / "meta" / "info.json").read_text())
    ds = load_demos(tmp_path / "par")
    assert info["total_episodes"] == 6 and len(ds.actions) == info["total_frames"]
    assert sorted(set(ds.episode_index.tolist())) == list(range(6))
    tasks = {json.loads(x)["task_index"]: json.loads(x)["task"]
             for x in (tmp_path / "par" / "meta" / "tasks.jsonl").read_text().splitlines()}
    assert sorted(tasks.values()) == sorted(set(ds.instructions))  # one entry per instruction, renumbered
    for e in range(6):
        table = pq.read_table(tmp_path / "par" / "data" / "chunk-000" / f"episode_{e:06d}.parquet").to_pydict()
        first = int(ds.episode_starts[e])
        assert set(table["episode_index"]) == {e} and tasks[table["task_index"][0]] == ds.instructions[first]
        assert table["index"] == list(range(first, first + len(table["index"])))  # frame counter, renumbered
    rows = [json.loads(x) for x in (tmp_path / "par" / "meta" / "episodes.jsonl").read_text().splitlines()]
    seeds = [r["seed"] for r in rows]  # each episode keeps the reset seed it was recorded on
    assert len(set(seeds)) == 6 and seeds[0] == DEMO_SEED_BASE and {s % 2 for s in seeds} == {0, 1}
    episodes = [ds.actions[ds.episode_index == e] for e in range(6)]
    env = TabletopEnv(tasks=("lift",), image_size=64)  # worker 0's first episode is the one seed_base gives
    collect_expert_demos(env, tmp_path / "one", 1, "tabletop", DEMO_SEED_BASE)
    env.close()
    np.testing.assert_array_equal(load_demos(tmp_path / "one").actions, episodes[0])
    with pytest.raises(FileExistsError, match="already holds a dataset"):
        expert_demos(cfg, demo_dir, 1, workers=2)
    with pytest.raises(ValueError, match="demo workers: got 0; allowed: >= 1"):
        expert_demos(cfg, tmp_path / "none", 1, workers=0)


def test_demo_format_is_lerobot_layout(demo_dir):
    import pyarrow.parquet as pq

    from rlsys.envs.demos import load_demos

    info = json.loads((demo_dir / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v2.1" and info["total_episodes"] == 4
    assert info["features"]["observation.images.agentview"]["dtype"] == "image"
    table = pq.read_table(demo_dir / "data" / "chunk-000" / "episode_000000.parquet")
    assert {"observation.state", "action", "episode_index", "frame_index", "index", "task_index",
            "timestamp", "next.done"} <= set(table.column_names)
    tasks = [json.loads(x)["task"] for x in (demo_dir / "meta" / "tasks.jsonl").read_text().splitlines()]
    assert any("pick up" in t for t in tasks) and any("left edge" in t for t in tasks)
    ds = load_demos(demo_dir)
    assert ds.images.shape[1:] == (2, 64, 64, 3) and ds.images.dtype == np.uint8
    assert len(ds.actions) == info["total_frames"]
    chunks, valid = ds.action_chunks(5)
    last = ds.episode_starts[0] + ds.episode_lengths[0] - 1
    assert valid[last].tolist() == [True, False, False, False, False]
    np.testing.assert_array_equal(chunks[last, 1], ds.actions[last])


def test_demos_in_the_simulators_own_interpreter_match_in_process(demo_dir, tmp_path, capsys):
    """env.python (RoboTwin's venv): `rlsys demos` runs the expert in that interpreter; here the
    interpreter is this one, so the episodes must be the in-process fixture's, action for action."""
    from rlsys.cli import main
    from rlsys.envs.demos import load_demos

    out = tmp_path / "ds"
    main(["demos", "--out", str(out), "--episodes", "2", "--set", "env.tasks=[lift,push_left]",
          "--set", "env.subprocess=true", "--set", f"env.python={sys.executable}"])
    assert "wrote 4 episodes" in capsys.readouterr().out
    report = json.loads((out / "meta" / "expert_report.json").read_text())
    assert {t: r["kept"] for t, r in report.items()} == {"lift": 2, "push_left": 2}
    here, there = load_demos(demo_dir), load_demos(out)
    np.testing.assert_array_equal(there.actions, here.actions)
    np.testing.assert_array_equal(there.images, here.images)
    assert there.instructions == here.instructions


def test_sft_never_builds_a_simulator_that_lives_in_another_interpreter(tmp_path, monkeypatch):
    """env.python (RoboTwin's venv): run_sft collects the demos there, trains here, and evaluates
    through a subprocess pool; building the simulator in this interpreter would fail (RoboTwin is
    not importable here), so here it raises."""
    import rlsys.envs.pool as pool
    from rlsys.sft import run_sft

    def no_sim_here(cfg):
        raise AssertionError(f"built {cfg.name} in-process")

    monkeypatch.setattr(pool, "make_single_env", no_sim_here)
    cfg = load_config("tabletop_sft", ["env.tasks=[lift]", "sft.demos_per_task=1", "sft.steps=2",
                                       "sft.eval_episodes=1", "eval_num_envs=1", "env.subprocess=true",
                                       f"env.python={sys.executable}"])
    res = run_sft(cfg, tmp_path / "sft")
    assert set(res["eval"]["tasks"]) == {"lift"} and (tmp_path / "sft" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "sft_demos" / "meta" / "expert_report.json").read_text())["lift"]["kept"] == 1
    # `rlsys eval` of that checkpoint, with a config that does not name the interpreter: the checkpoint's
    from rlsys.evaluation import run_eval_command

    ev = run_eval_command(load_config("tabletop_sft"), str(tmp_path / "sft"), str(tmp_path / "ev"), 1, None)
    assert set(ev["tasks"]) == {"lift"} and (tmp_path / "ev" / "eval.md").is_file()


def test_checkpoint_round_trip_same_actions(tmp_path):
    from rlsys.checkpoint import CheckpointError, load_policy, save_policy
    from rlsys.envs.tabletop.env import EMBODIMENT
    from rlsys.flow import ODE
    from rlsys.policy.flow_policy import FlowPolicy
    from rlsys.prompt import ObservationBuilder

    torch.manual_seed(0)
    pol = FlowPolicy(PolicyConfig())
    pol.set_normalization(np.full(7, 0.1), np.full(7, 0.5), np.zeros(8), np.ones(8))
    save_policy(tmp_path / "ck", pol, EnvConfig(), EMBODIMENT, meta={"stage": "test"})
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["config.json", "model.safetensors",
                                                                      "normalization.json"]
    loaded, env_cfg, emb, meta = load_policy(tmp_path / "ck")
    assert env_cfg == EnvConfig() and emb == EMBODIMENT and meta["stage"] == "test"
    obs = ObservationBuilder(pol.cfg, EMBODIMENT)(np.zeros((3, 2, 64, 64, 3), np.uint8),
                                                    np.zeros((3, 8), np.float32), ["pick up the red cube"] * 3)
    a = pol.sample(obs, ODE(), torch.Generator().manual_seed(1)).actions
    b = loaded.sample(obs, ODE(), torch.Generator().manual_seed(1)).actions
    np.testing.assert_array_equal(a, b)
    with pytest.raises(CheckpointError, match="policy.width: checkpoint 128 vs requested 64"):
        load_policy(tmp_path / "ck", expect=PolicyConfig(width=64))
    # overwriting is atomic: the folder is replaced whole
    save_policy(tmp_path / "ck", pol, EnvConfig(), EMBODIMENT, meta={"stage": "second"})
    assert load_policy(tmp_path / "ck")[3]["stage"] == "second"
    assert not any(p.name.startswith(".ck") for p in tmp_path.iterdir())
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_policy(tmp_path)


def test_checkpoint_loads_where_its_simulator_is_absent(tmp_path, monkeypatch):
    """A policy trained with RoboTwin in its own venv loads on a machine with neither that venv nor
    the assets (serving, an RL start elsewhere); running its env there still fails with the reason."""
    import dataclasses

    from rlsys.checkpoint import load_policy, save_policy
    from rlsys.envs.tabletop.env import EMBODIMENT
    from rlsys.evaluation import run_eval_command
    from rlsys.policy.flow_policy import FlowPolicy

    save_policy(tmp_path / "ck", FlowPolicy(PolicyConfig()), EnvConfig(), EMBODIMENT)
    cfg_file = tmp_path / "ck" / "config.json"
    data = json.loads(cfg_file.read_text())
    gone = str(tmp_path / "venv-elsewhere" / "bin" / "python")
    data["env"].update(name="robotwin", tasks=["stack_blocks_two"], cameras=["head"], subprocess=True, python=gone)
    cfg_file.write_text(json.dumps(data))
    (tmp_path / "no_assets").mkdir()
    monkeypatch.setenv("ROBOTWIN_ASSETS_ROOT", str(tmp_path / "no_assets"))
    monkeypatch.delenv("ASSETS_PATH", raising=False)

    policy, env_cfg, _, _ = load_policy(tmp_path / "ck")
    assert env_cfg.name == "robotwin" and env_cfg.python == gone and policy is not None
    with pytest.raises(ConfigError, match="python: .*executable interpreter"):
        dataclasses.replace(env_cfg)  # the machine checks are back outside the checkpoint load
    with pytest.raises(ConfigError, match="python: .*executable interpreter"):
        run_eval_command(load_config("tabletop_sft"), str(tmp_path / "ck"), str(tmp_path / "ev"), 1, None)
    here = load_config("tabletop_sft", [f"env.python={sys.executable}", "env.subprocess=true"])
    with pytest.raises(ConfigError, match="'stack_blocks_two' cannot run with the assets"):
        run_eval_command(here, str(tmp_path / "ck"), str(tmp_path / "ev"), 1, None)
    assert not (tmp_path / "ev").exists()


def test_checkpoint_loads_with_a_fresh_critic_of_another_kind(tmp_path):
    """RL from an SFT checkpoint may swap the (never SFT-trained) value head; nothing else changes."""
    from rlsys.checkpoint import CheckpointError, load_policy, save_policy
    from rlsys.envs.tabletop.env import EMBODIMENT
    from rlsys.policy.flow_policy import AttentionPoolValue, FlowPolicy

    torch.manual_seed(0)
    pol = FlowPolicy(PolicyConfig())
    save_policy(tmp_path / "ck", pol, EnvConfig(), EMBODIMENT, meta={"stage": "sft"})
    want = PolicyConfig(critic="attention")
    with pytest.raises(CheckpointError, match="policy.critic: checkpoint 'pooled' vs requested 'attention'"):
        load_policy(tmp_path / "ck", expect=want)
    loaded = load_policy(tmp_path / "ck", expect=want, critic="attention")[0]
    assert loaded.cfg == want and isinstance(loaded.value_head, AttentionPoolValue)
    old = pol.state_dict()
    for k, v in loaded.state_dict().items():
        if not k.startswith("value_head."):
            torch.testing.assert_close(v, old[k], msg=k)
    same = load_policy(tmp_path / "ck", critic="pooled")[0]  # same kind: the stored head is kept
    torch.testing.assert_close(same.value_head[0].weight, pol.value_head[0].weight)


def test_flow_noise_rl_starts_from_an_sft_checkpoint_without_a_noise_head(tmp_path):
    """pi-RL's Flow-Noise: the RL start adds a fresh learned-std head to an SFT policy; the flow is kept."""
    from rlsys.checkpoint import CheckpointError, load_policy, save_policy
    from rlsys.envs.tabletop.env import EMBODIMENT
    from rlsys.flow import ODE, FlowNoise
    from rlsys.policy.flow_policy import FlowPolicy
    from rlsys.prompt import ObservationBuilder

    torch.manual_seed(0)
    sft = FlowPolicy(PolicyConfig())
    save_policy(tmp_path / "ck", sft, EnvConfig(), EMBODIMENT)
    want = PolicyConfig(noise_head=True)
    with pytest.raises(CheckpointError, match="policy.noise_head: checkpoint False vs requested True"):
        load_policy(tmp_path / "ck", expect=want)
    rl = load_policy(tmp_path / "ck", expect=want, noise_head=True)[0]
    assert rl.cfg == want and not rl.noise_head.weight.any() and not rl.noise_head.bias.any()
    obs = ObservationBuilder(sft.cfg, EMBODIMENT)(np.zeros((2, 2, 64, 64, 3), np.uint8),
                                                   np.zeros((2, 8), np.float32), ["lift the cube"] * 2)
    np.testing.assert_array_equal(rl.sample(obs, ODE(), torch.Generator().manual_seed(1)).actions,
                                  sft.sample(obs, ODE(), torch.Generator().manual_seed(1)).actions)
    with pytest.raises(ContractError, match="needs a noise head"):
        sft.sample(obs, FlowNoise(), torch.Generator().manual_seed(1))
    out = rl.sample(obs, FlowNoise(), torch.Generator().manual_seed(1))
    assert np.isfinite(out.actions).all()
    assert len(load_policy(tmp_path / "ck", noise_head=False)[0].state_dict()) < len(rl.state_dict())


def test_policy_rejects_mismatched_observations():
    from rlsys.envs.api import Embodiment
    from rlsys.flow import ODE
    from rlsys.policy.flow_policy import FlowPolicy
    from rlsys.prompt import ObservationBuilder

    pol = FlowPolicy(PolicyConfig())
    bad = Observation(**{**_obs(), "images": np.zeros((2, 1, 64, 64, 3), np.uint8)})
    with pytest.raises(ContractError, match="policy expects \\[B, 2, 64, 64, 3\\]"):
        pol.sample(bad, ODE())
    wide = Embodiment("a big robot", "dual arms", 50.0, 14, 14, tuple(f"j{i}" for i in range(14)))
    with pytest.raises(ContractError, match="14 action channels but policy.action_channels is 7"):
        ObservationBuilder(PolicyConfig(), wide)


def test_sft_loss_decreases_on_demos(demo_dir):
    from rlsys.envs.demos import load_demos
    from rlsys.policy.flow_policy import FlowPolicy
    from rlsys.prompt import ObservationBuilder
    from rlsys.sft import SFTData, normalization_stats, train_sft

    ds = load_demos(demo_dir)
    cfg = load_config("tabletop_sft", ["sft.steps=40", "sft.batch_size=16", "sft.log_every=10", "sft.lr=1e-3"])
    torch.manual_seed(0)
    pol = FlowPolicy(cfg.policy)
    pol.set_normalization(**normalization_stats(ds))
    data = SFTData(ds, ObservationBuilder(cfg.policy, ds.embodiment), 5)
    hist = train_sft(pol, data, cfg)
    assert hist[-1]["loss"] < 0.8 * hist[0]["loss"]


# ---------------------------------------------------------------- CLI
def test_cli_help_and_print_config():
    for cmd in ("train", "sft", "eval", "demos"):
        out = subprocess.run([sys.executable, "-m", "rlsys.cli", cmd, "--help"], capture_output=True, text=True)
        assert out.returncode == 0 and "--preset" in out.stdout
    out = subprocess.run([sys.executable, "-m", "rlsys.cli", "train", "--print-config", "--set", "env.num_envs=3"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and "num_envs: 3" in out.stdout and "algo:" in out.stdout


def test_cli_bad_config_fails_fast_with_the_field():
    out = subprocess.run([sys.executable, "-m", "rlsys.cli", "train", "--set", "algo.gamma=2"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "algo.gamma: got 2.0; allowed: (0, 1]" in out.stderr


def test_normalization_floors_near_constant_channels():
    from rlsys.envs.demos import DemoSet
    from rlsys.sft import STD_FLOOR, normalization_stats

    states = np.zeros((10, 8), np.float32)
    states[:, 0] = np.linspace(0, 1, 10)
    states[:, 5] = np.linspace(0, 1e-5, 10)  # a yaw that barely moves in the demos
    ds = DemoSet(images=np.zeros((10, 1, 16, 16, 3), np.uint8), states=states,
                 actions=np.zeros((10, 7), np.float32), episode_index=np.zeros(10, np.int64),
                 frame_index=np.arange(10), instructions=["x"] * 10, episode_starts=np.zeros(1, np.int64),
                 episode_lengths=np.array([10]), info={})
    st = normalization_stats(ds)
    assert st["proprio_std"][5] == pytest.approx(STD_FLOOR) and st["proprio_std"][3] == 1.0
    assert st["action_std"].min() == 1.0  # constant channels get std 1


def test_report_writes_png_and_html(tmp_path):
    from rlsys.report import make_report

    rows = [{"iteration": i, "rollout/env_steps_per_s": 100.0 + i, "rollout/success_rate": 0.1 * i,
             "learner/policy_loss": 0.5 / i, "time/collect_s": 1.0} for i in range(1, 5)]
    rows[-1]["eval/success_rate"] = 0.5
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    png, page = make_report(tmp_path)
    assert png.stat().st_size > 10_000 and "data:image/png;base64" in page.read_text()
    with pytest.raises(FileNotFoundError, match="no metrics.jsonl"):
        make_report(tmp_path / "missing")
