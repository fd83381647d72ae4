"""SFT survives interruption: periodic checkpoints in OUT.partial, Ctrl-C saves one, and a resumed SFT
ends at the same weights as an uninterrupted one; ``rlsys train`` interrupted during its SFT stage
continues there with ``--resume``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from kit import SMALL, read_metrics

from rlsys.checkpoint import load_policy
from rlsys.config import load_config
from rlsys.envs.demos import load_demos
from rlsys.policy.flow_policy import FlowPolicy
from rlsys.prompt import ObservationBuilder
from rlsys.sft import SFTCheckpointer, SFTData, normalization_stats, train_sft


def test_sft_resumes_exactly_where_it_was_interrupted(demo_dir, tmp_path):
    cfg = load_config("tabletop_sft", ["sft.steps=6", "sft.batch_size=8", "sft.log_every=1", "sft.checkpoint_every=2"])
    ds = load_demos(demo_dir)
    data = SFTData(ds, ObservationBuilder(cfg.policy, ds.embodiment), cfg.policy.action_horizon)

    def fresh() -> FlowPolicy:
        torch.manual_seed(0)
        policy = FlowPolicy(cfg.policy)
        policy.set_normalization(**normalization_stats(ds))
        return policy

    whole = fresh()
    train_sft(whole, data, cfg)
    saver = SFTCheckpointer(tmp_path / "sft", cfg, ds.embodiment, {"stage": "sft"})

    def ctrl_c_at_step_3(row: dict) -> None:
        if row["step"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_sft(fresh(), data, cfg, log=ctrl_c_at_step_3, saver=saver)
    trainer = json.loads((saver.path / "trainer.json").read_text())
    assert trainer["step"] == 3 and [r["step"] for r in trainer["history"]] == [1, 2, 3]
    assert len(json.loads((saver.path / "sft_log.json").read_text())) == 3  # the loss log so far
    usable, *_ = load_policy(saver.path)  # a policy checkpoint like any other
    assert usable.cfg == cfg.policy
    resumed = fresh()
    history = train_sft(resumed, data, cfg, saver=saver)
    assert [r["step"] for r in history] == [1, 2, 3, 4, 5, 6]
    for k, v in whole.state_dict().items():
        np.testing.assert_allclose(resumed.state_dict()[k].numpy(), v.numpy(), rtol=1e-5, atol=1e-6, err_msg=k)


def test_train_interrupted_in_its_sft_stage_resumes_there(tmp_path):
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_ADDRESS", None)
    sets = [*SMALL, f"run_dir={tmp_path}", "sft.steps=400", "sft.checkpoint_every=10", "sft.batch_size=8",
            "sft.demos_per_task=2", "sft.eval_episodes=1", "iterations=1", "eval_every=1", "eval_episodes=1"]
    args = [sys.executable, "-m", "rlsys", "train", "--preset", "tabletop_ppo"]
    for s in sets:
        args += ["--set", s]
    # SIGINT as a terminal delivers it: a runner that started the tests in the background (SIGINT
    # ignored, which children inherit) must not make the Ctrl-C a no-op
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not list(tmp_path.glob("*/sft.partial/trainer.json")):
            time.sleep(0.2)
        assert list(tmp_path.glob("*/sft.partial/trainer.json")), "the SFT wrote no checkpoint"
        os.kill(proc.pid, signal.SIGINT)  # Ctrl-C
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    (run_dir,) = tmp_path.glob("tabletop-ppo-*")
    assert "sft: interrupted at step" in out and "--resume" in out, out[-2000:]
    step = json.loads((run_dir / "sft.partial" / "trainer.json").read_text())["step"]
    assert 10 <= step < 400 and not (run_dir / "sft").exists() and not (run_dir / "metrics.jsonl").exists()
    res = subprocess.run([sys.executable, "-m", "rlsys", "train", "--resume", str(run_dir)], env=env,
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert f"sft: resuming at step {step}" in res.stdout
    assert (run_dir / "sft" / "model.safetensors").exists() and not (run_dir / "sft.partial").exists()
    # the SFT names its demo folder absolutely, so an RL start from it in another directory finds them
    demos = json.loads((run_dir / "sft" / "config.json").read_text())["meta"]["demos"]
    assert os.path.isabs(demos) and (run_dir / "sft_demos").resolve() == Path(demos)
    assert [r["step"] for r in json.loads((run_dir / "sft" / "sft_log.json").read_text())][-1] == 400
    assert [r["iteration"] for r in read_metrics(run_dir)] == [1]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["before"]["episodes"] == 1 and summary["after"]["episodes"] == 1
    assert (run_dir / "report.png").stat().st_size > 10_000 and "report:" in res.stdout
