"""The application layer: CLI commands, SFT driver across interpreters, the run report."""

import json
import subprocess
import sys

import pytest

from rlsys.config import list_presets, load_config


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


def test_cli_help_and_print_config():
    for cmd in ("train", "sft", "eval", "demos"):
        out = subprocess.run([sys.executable, "-m", "rlsys.cli", cmd, "--help"], capture_output=True, text=True)
        assert out.returncode == 0 and "--preset" in out.stdout
    out = subprocess.run([sys.executable, "-m", "rlsys.cli", "train", "--print-config", "--set", "env.num_envs=3"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and "num_envs: 3" in out.stdout and "algo:" in out.stdout


def test_cli_bad_config_fails_fast_with_the_field():
    out = subprocess.run([sys.executable, "-m", "rlsys.cli", "train", "--set", "ppo.gamma=2"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "ppo.gamma: got 2.0; allowed: (0, 1]" in out.stderr


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


@pytest.mark.parametrize("override,match", [
    ("env.name=libreo_spatial", "env.name: got 'libreo_spatial'; allowed: one of libero_10"),
    ("env.tasks=[lfit]", "env.tasks: unknown tabletop task 'lfit'.*Did you mean 'lift'"),
    ("env.cameras=[agentvew,wrist]", "env.cameras: unknown tabletop camera 'agentvew'.*Did you mean 'agentview'"),
    ("sampler.name=flow_sd", "sampler.name: got 'flow_sd'; allowed: one of flow_noise, flow_sde, ode"),
    ("algo.name=ppo_rtf", "algo.name: got 'ppo_rtf'; allowed: one of grpo, ppo, ppo_rft, rft"),
    ("policy.model=tinny", "policy.model: got 'tinny'; allowed: one of pi0, pi05, tiny"),
    ("ppo.gamma=2", r"ppo.gamma: got 2.0; allowed: \(0, 1\]"),
])
@pytest.mark.parametrize("command", ["train", "sft", "eval", "demos"])
def test_every_command_rejects_a_typo_before_anything_starts(tmp_path, command, override, match):
    """A typo in any registry name or a value out of range: exit 2 with the field and what is allowed,
    before Ray, demos, SFT or a run directory exist (and --print-config says the same)."""
    import re

    extra = {"train": ["--set", f"run_dir={tmp_path / 'runs'}"], "sft": ["--out", str(tmp_path / "sft")],
             "eval": ["--ckpt", str(tmp_path / "none")], "demos": ["--episodes", "1", "--out", str(tmp_path / "d")]}
    for args in ([command, "--set", override, *extra[command]],
                 [command, "--print-config", "--set", override, *extra[command]]):
        out = subprocess.run([sys.executable, "-m", "rlsys", *args], capture_output=True, text=True, timeout=120,
                             cwd=tmp_path)
        assert out.returncode == 2 and re.search(match, out.stderr), (args, out.stderr[-800:])
        assert "Ray" not in out.stderr + out.stdout and not any(tmp_path.iterdir()), list(tmp_path.iterdir())


def test_presets_print_a_menu():
    out = subprocess.run([sys.executable, "-m", "rlsys", "presets"], capture_output=True, text=True, timeout=60)
    rows = out.stdout.strip().splitlines()
    assert out.returncode == 0 and len(rows) == len(list_presets()) <= 16  # a menu, not a results log
    assert all(len(r.split(None, 1)) == 2 for r in rows)  # name, then its description
    assert any(r.startswith("tabletop_quickstart ") and "min" in r for r in rows)
