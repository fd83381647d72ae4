"""The config schema, presets and overrides: every bad value fails when the config is built, naming
the field and what is allowed."""

from pathlib import Path

import pytest

from rlsys.config import ConfigError, TrainConfig, list_presets, load_config


# ---------------------------------------------------------------- config
def test_presets_load_and_inherit():
    assert {"tabletop_sft", "tabletop_ppo", "tabletop_fewshot_ppo_rft"} <= set(list_presets())
    cfg = load_config("tabletop_fewshot_grpo")  # base: tabletop_fewshot_ppo
    assert cfg.algo.name == "grpo" and cfg.env.tasks == ("lift",) and cfg.optim.train_backbone
    hybrid = load_config("tabletop_fewshot_ppo_rft")
    assert hybrid.algo.name == "ppo_rft" and not hybrid.optim.train_backbone and hybrid.imitation.train_backbone


def test_presets_are_a_menu_one_level_deep():
    """At most ~10 presets, each with a one-line description; a base preset has no base of its own."""
    import yaml

    from rlsys.config import _preset_file, preset_description

    names = list_presets()
    assert len(names) <= 16
    for name in names:
        desc = preset_description(name)
        assert desc and "\n" not in desc and len(desc) <= 140, name
        base = _preset_file(name).get("base")
        assert base is None or "base" not in _preset_file(base), f"{name}: {base} has a base of its own"
    text = (Path(__file__).parents[2] / "rlsys" / "presets" / "tabletop_sft.yaml").read_text()
    assert yaml.safe_load(text)["description"]


def test_a_two_level_preset_chain_is_refused(monkeypatch):
    from rlsys import config as C

    files = {"a": {"sft": {"steps": 1}}, "b": {"base": "a"}, "c": {"base": "b"}}
    monkeypatch.setattr(C, "_preset_file", lambda name: dict(files[name]))
    assert C._preset_data("b") == {"sft": {"steps": 1}}
    with pytest.raises(ConfigError, match="'c': its base 'b' has a base of its own"):
        C._preset_data("c")


@pytest.mark.parametrize("name", list_presets())
def test_every_shipped_preset_validates(name, monkeypatch, tmp_path):
    """A preset users can name must build a valid config (the checks run in the dataclasses); one that
    names a pretrained folder is refused without it, naming the field, and valid with one."""
    from rlsys.config import _preset_data

    folder = _preset_data(name).get("policy", {}).get("pretrained")
    if folder:
        with pytest.raises(ConfigError, match=f"policy.pretrained: {folder} is not a folder"):
            load_config(name)
        model = _preset_data(name)["policy"]["model"]
        (tmp_path / "config.json").write_text(f'{{"model_type": "{model}"}}')  # the real size's defaults
        (tmp_path / "model.safetensors").write_bytes(b"")
        cfg = load_config(name, [f"policy.pretrained={tmp_path}"])
        assert cfg.policy.action_horizon == 50 and cfg.placement.use_gpu
        return
    if name.startswith("robotwin"):  # its interpreter and assets are checked at load
        from kit import ROBOTWIN_ASSETS as SHARED
        from kit import ROBOTWIN_PYTHON as PYTHON

        if not Path(PYTHON).is_file() or not (SHARED / "assets").is_dir():
            pytest.skip(f"{name}: no RoboTwin interpreter ({PYTHON}) or assets ({SHARED}) here")
        monkeypatch.setenv("ROBOTWIN_ASSETS_ROOT", str(SHARED))
    cfg = load_config(name)
    assert cfg.env.name and cfg.algo.name


def test_libero_hybrid_preset_keeps_the_ppo_split():
    hybrid, ppo = load_config("libero_spatial_ppo_rft"), load_config("libero_spatial_ppo")
    assert hybrid.algo.name == "ppo_rft" and hybrid.imitation.demos and hybrid.imitation.steps == 20
    assert (hybrid.env, hybrid.eval_init_state_offset, hybrid.sft) == (ppo.env, ppo.eval_init_state_offset, ppo.sft)


def test_dotted_overrides_are_typed():
    cfg = load_config("tabletop_ppo", ["optim.actor_lr=3e-4", "env.num_envs=4", "env.cameras=[agentview]",
                                       "policy.num_cameras=1", "sampler.logprob=token_level"])
    assert cfg.optim.actor_lr == pytest.approx(3e-4) and cfg.env.num_envs == 4
    assert cfg.env.cameras == ("agentview",) and cfg.sampler.logprob == "token_level"


@pytest.mark.parametrize("override,match", [
    ("optim.actor_lrr=1", r"optim.actor_lrr: unknown key.*Did you mean 'actor_lr'"),
    ("algo.actor_lr=1", r"algo.actor_lr: unknown key"),  # the optimiser has its own section
    ("env.num_envs=two", r"env.num_envs: expected an integer, got 'two'"),
    ("env.num_envs=0", r"env.num_envs: got 0; allowed: >= 1"),
    ("ppo.gamma=1.5", r"ppo.gamma: got 1.5; allowed: \(0, 1\]"),
    ("grpo.group_size=1", r"grpo.group_size: got 1; allowed: >= 2"),
    ("optim.betas=[0.9]", r"optim.betas: got \(0.9,\); allowed: two numbers"),
    ("algo.target_kl=-1", r"algo.target_kl: got -1.0; allowed: >= 0"),
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
    ("algo.grpo_scale=batch", r"algo.grpo_scale: unknown key"),  # removed research switches
    ("sampler.stochastic_step=last", r"sampler.stochastic_step: unknown key"),
    ("sampler.name=latent", r"sampler.name: got 'latent'; allowed: one of flow_noise, flow_sde, ode"),
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


