"""`ray job submit` against a local head, and a fake-multinode autoscaling run where a
disaggregated rlsys run makes the autoscaler add both pools and actors land on the right nodes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
import torch

from rlsys.checkpoint import save_policy
from rlsys.config import load_config
from rlsys.envs.tabletop.env import EMBODIMENT
from rlsys.policy.flow_policy import FlowPolicy

REPO = Path(__file__).resolve().parents[2]
SMALL = ["env.tasks=[lift]", "env.cameras=[agentview]", "env.image_size=32", "env.num_envs=2",
         "policy.num_cameras=1", "policy.image_size=32", "policy.width=32", "policy.heads=2",
         "policy.backbone_layers=1", "policy.expert_layers=1", "rollout.chunks_per_segment=2",
         "rollout.num_env_workers=2", "rollout.env_groups=1", "algo.epochs=1", "algo.minibatches=1",
         "iterations=1", "eval_every=1", "eval_episodes=1"]
# Token auth stays on (Ray's default for `ray start`); the client side must opt in to send the token
# from ~/.ray/auth_token.
ENV = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token"}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    cfg = load_config("tabletop_ppo", SMALL)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ck") / "sft"
    save_policy(path, FlowPolicy(cfg.policy), cfg.env, EMBODIMENT)
    return str(path)


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    temp = tmp_path_factory.mktemp("rayhead")
    port, dash = 26379, 28265
    env = {k: v for k, v in ENV.items() if k != "RAY_ADDRESS"}
    subprocess.run(["ray", "start", "--head", f"--port={port}", "--num-cpus=4", "--resources={\"sim\": 4}",
                    "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--temp-dir={temp}",
                    "--include-dashboard=true"], check=True, env=env, capture_output=True, timeout=120)
    yield f"http://127.0.0.1:{dash}"
    subprocess.run(["ray", "stop", "--force"], env=env, capture_output=True, timeout=120)


def _wait(client, job_id: str, timeout: float = 600.0):
    from ray.job_submission import JobStatus

    deadline = time.time() + timeout
    while time.time() < deadline:
        status = client.get_job_status(job_id)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            return status
        time.sleep(2)
    raise TimeoutError(job_id)


def test_ray_job_submit_runs_training_and_bad_config_fails(head, ckpt, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    token = (Path.home() / ".ray" / "auth_token").read_text().strip()  # written by `ray start`
    client = JobSubmissionClient(head, headers={"Authorization": f"Bearer {token}"})
    sets = " ".join(f"--set {s}" for s in (*SMALL, f"run_dir={tmp_path}", f"init_checkpoint={ckpt}"))
    runtime_env = {"working_dir": str(REPO), "excludes": [".venv", "venv", "runs", ".git", "benchmarks/results"],
                   "env_vars": {"MUJOCO_GL": "egl"}}
    job = client.submit_job(entrypoint=f"{sys.executable} -m rlsys train --preset tabletop_ppo {sets}",
                            runtime_env=runtime_env)
    status = _wait(client, job)
    logs = client.get_job_logs(job)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    runs = list(tmp_path.glob("tabletop-ppo-*"))
    assert len(runs) == 1 and (runs[0] / "metrics.jsonl").exists() and (runs[0] / "checkpoint").exists()
    assert "run directory" in logs

    bad = client.submit_job(entrypoint=f"{sys.executable} -m rlsys train --preset tabletop_ppo --set ppo.gamma=3",
                            runtime_env=runtime_env)
    assert _wait(client, bad, 300) == JobStatus.FAILED
    assert "ppo.gamma: got 3.0; allowed: (0, 1]" in client.get_job_logs(bad)


def test_a_run_the_cluster_cannot_place_fails_before_anything_starts(head, ckpt, tmp_path):
    """The README's recipe on a machine with fewer CPUs than the plan: a head with 4 CPUs and 4 `sim`
    slots, a disaggregated run of 4 env workers + an inference worker + the learner (6 CPUs). Ray
    would leave actors pending forever; rlsys says which request does not fit and what the cluster
    has, exit 2, before a run directory, the SFT or any actor."""
    sets = [f"--set={s}" for s in (*SMALL, "placement.mode=disaggregated", "rollout.num_env_workers=4",
                                   "placement.resource_wait_s=30", "run_dir=runs")]
    t0 = time.time()
    out = subprocess.run([sys.executable, "-m", "rlsys", "train", "--preset", "tabletop_ppo", *sets],
                         env={**ENV, "RAY_ADDRESS": "127.0.0.1:26379"}, cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-3000:]
    assert ("placement: this Ray cluster cannot place the run: the run needs {CPU: 6, sim: 4} in all (learner "
            "{CPU: 1}, inference worker {CPU: 1}, 4 x env worker {CPU: 1, sim: 1})") in out.stderr, out.stderr[-3000:]
    assert "the cluster's nodes have {CPU: 4, sim: 4}, and no autoscaler can add more" in out.stderr
    assert time.time() - t0 < 120 and not (tmp_path / "runs").exists()


def _fake_cluster_class():
    from ray.cluster_utils import AutoscalingCluster

    class FakeCluster(AutoscalingCluster):
        """Ray's AutoscalingCluster reads a base YAML its wheel does not ship; give it ours."""

        def _generate_config(self, head_resources, worker_node_types, autoscaler_v2=False, **kw):
            types = {**worker_node_types,
                     "ray.head.default": {"resources": head_resources, "node_config": {}, "max_workers": 0}}
            cfg = {"cluster_name": "rlsys_fake", "max_workers": 8, "head_node_type": "ray.head.default",
                   "provider": {"type": "fake_multinode", "use_node_id_as_ip": True,
                                "disable_node_updaters": True, "disable_launch_config_check": True},
                   "available_node_types": types, "auth": {}, "upscaling_speed": 1.0, "idle_timeout_minutes": 1,
                   "docker": {}, "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
                   "rsync_exclude": [], "rsync_filter": [], **{k: [] for k in (
                       "initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                       "head_start_ray_commands", "worker_start_ray_commands")}}
            cfg.update(kw)
            return cfg

    return FakeCluster


def test_fake_multinode_autoscaling_places_actors_on_the_right_pools(ckpt, tmp_path):
    from ray.util.state import list_actors

    cluster = _fake_cluster_class()(
        head_resources={"CPU": 1},
        worker_node_types={
            "sim_pool": {"resources": {"CPU": 2, "sim": 2, "object_store_memory": 200 * 2**20},
                         "node_config": {}, "min_workers": 0, "max_workers": 1},
            "gpu_pool": {"resources": {"CPU": 2, "GPU": 1, "object_store_memory": 200 * 2**20},
                         "node_config": {}, "min_workers": 0, "max_workers": 2},
        },
    )
    cluster.start(_system_config={"enable_autoscaler_v2": False})
    try:
        ray.init("auto", log_to_driver=False)
        assert len([n for n in ray.nodes() if n["Alive"]]) == 1  # head only
        from rlsys.train import train

        # the simulated GPU nodes have no CUDA device: the policy actors run on their CPUs
        cfg = load_config("tabletop_ppo", [*SMALL, "placement.mode=disaggregated", "placement.use_gpu=true",
                                           "placement.allow_cpu_fallback=true",
                                           f"run_dir={tmp_path}", f"init_checkpoint={ckpt}"])
        train(cfg)
        nodes = {n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}
        assert any("sim" in r for r in nodes.values()) and any("GPU" in r for r in nodes.values())
        placed = {}
        for a in list_actors(detail=True, limit=1000):
            placed.setdefault(a.class_name, set()).add(a.node_id)
        assert all("sim" in nodes.get(n, {"sim": 1}) for n in placed["EnvWorker"])
        policy_nodes = placed["LearnerActor"] | placed["InferenceActor"]
        assert policy_nodes and all("GPU" in nodes.get(n, {"GPU": 1}) for n in policy_nodes)
    finally:
        ray.shutdown()
        cluster.shutdown()
