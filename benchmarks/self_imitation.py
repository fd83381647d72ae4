"""Is there an improvement signal in the policy's own rollouts? A diagnostic for issue #4.

Success-filtered self-imitation (expert iteration): each round rolls the current policy out with the
RL rollout sampler (Flow-SDE, as PPO does) on training seeds, keeps the successful episodes, and
fine-tunes with the flow-matching loss on the demos plus every episode kept so far. A control
arm fine-tunes the same start for the same steps on the demos alone, so "more SFT steps" is not
mistaken for a gain. Both arms are evaluated (ODE) on the same evaluation episodes as the start.
Writes benchmarks/results/<name>.json and .png.

    python benchmarks/self_imitation.py --ckpt <90-demo lift SFT> --rounds 3 --rollouts 256 \\
        --steps 500 --episodes 300 --workers 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlsys.checkpoint import load_policy, save_policy
from rlsys.config import load_config
from rlsys.envs.demos import DemoSet, load_demos
from rlsys.evaluation import run_eval_command
from rlsys.flow import Sampler, build_sampler
from rlsys.prompt import ObservationBuilder
from rlsys.sft import SFTData, train_sft

OUT = Path(__file__).parent / "results"
ROLLOUT_SEED_BASE = 3_000_000  # disjoint from demo (1e6 + k) and evaluation (2e6 + ...) seeds


def record_block(policy_cfg: Any, state: dict[str, np.ndarray], env_cfg: Any, embodiment: Any, task: str,
                 seeds: list[int], sampler: Sampler, gen_seed: int) -> list[dict[str, Any]]:
    """Roll one block of episodes out, one simulator step at a time so every frame is recorded
    (the same dynamics as executing whole chunks); -> one dict per episode (frames, success)."""
    from rlsys.actors.inference import load_numpy_state
    from rlsys.envs.pool import EnvPool
    from rlsys.policy.flow_policy import FlowPolicy

    torch.set_num_threads(1)
    policy = FlowPolicy(policy_cfg)
    load_numpy_state(policy, state)
    policy.eval()
    builder = ObservationBuilder(policy_cfg, embodiment)
    gen = torch.Generator().manual_seed(gen_seed)
    n = len(seeds)
    eps: list[dict[str, Any]] = [{"images": [], "states": [], "actions": [], "success": False} for _ in range(n)]
    with EnvPool(dataclasses.replace(env_cfg, num_envs=n)) as pool:
        obs, _ = pool.reset(seeds=seeds, options=[{"task": task}] * n)
        instructions = list(pool.instructions)
        done = np.zeros(n, bool)
        adim = pool.embodiment.action_dim
        while not done.all():
            chunk = policy.sample(builder(obs["images"], obs["proprio"], pool.instructions), sampler, gen)
            actions = chunk.actions[:, :, :adim]
            for k in range(actions.shape[1]):
                live = ~done
                if not live.any():
                    break
                res = pool.execute_chunk(actions[:, k : k + 1], lengths=live.astype(np.int64), autoreset=False)
                for i in np.flatnonzero(live):
                    eps[i]["images"].append(obs["images"][i])
                    eps[i]["states"].append(obs["proprio"][i])
                    eps[i]["actions"].append(actions[i, k])
                ended = (res.terminated | res.truncated) & live
                for i in np.flatnonzero(ended):
                    eps[i]["success"] = bool(res.success[i])
                done |= ended
                obs = res.obs
    return [{"images": np.stack(e["images"]), "states": np.stack(e["states"]).astype(np.float32),
             "actions": np.stack(e["actions"]).astype(np.float32), "success": e["success"],
             "instruction": instructions[i]} for i, e in enumerate(eps)]


def collect(policy: Any, env_cfg: Any, embodiment: Any, task: str, seeds: list[int], sampler: Sampler,
            num_envs: int, workers: int, seed: int) -> list[dict[str, Any]]:
    """``record_block`` over blocks of ``num_envs`` seeds, ``workers`` Ray tasks at a time."""
    import ray

    from rlsys.actors.inference import state_to_numpy
    from rlsys.progress import Progress

    state = ray.put(state_to_numpy(policy))
    remote = ray.remote(num_cpus=1)(record_block)
    blocks = [seeds[i : i + num_envs] for i in range(0, len(seeds), num_envs)]
    out: list[dict[str, Any]] = []
    pending: list[Any] = []
    with Progress("self-imitation rollouts", total=len(seeds)) as bar:
        for b, block in enumerate(blocks):
            pending.append(remote.remote(policy.cfg, state, env_cfg, embodiment, task, block, sampler, seed * 7919 + b))
            while len(pending) >= workers or (b == len(blocks) - 1 and pending):
                ready, pending = ray.wait(pending, num_returns=1)
                eps = ray.get(ready[0])
                out += eps
                bar.advance(len(eps), status=f"kept {sum(e['success'] for e in out)}/{len(out)}")
    return out


def with_episodes(demos: DemoSet, episodes: list[dict[str, Any]]) -> DemoSet:
    """``demos`` plus recorded episodes as more demo episodes (in memory)."""
    if not episodes:
        return demos
    lengths = np.array([len(e["actions"]) for e in episodes], np.int64)
    first = int(demos.episode_index.max()) + 1
    all_lengths = np.concatenate([demos.episode_lengths, lengths])
    return DemoSet(
        images=np.concatenate([demos.images, *[e["images"] for e in episodes]]),
        states=np.concatenate([demos.states, *[e["states"] for e in episodes]]),
        actions=np.concatenate([demos.actions, *[e["actions"] for e in episodes]]),
        episode_index=np.concatenate([demos.episode_index,
                                      *[np.full(n, first + j, np.int64) for j, n in enumerate(lengths)]]),
        frame_index=np.concatenate([demos.frame_index, *[np.arange(n, dtype=np.int64) for n in lengths]]),
        instructions=demos.instructions + [e["instruction"] for e in episodes for _ in range(len(e["actions"]))],
        episode_starts=np.concatenate([[0], np.cumsum(all_lengths)[:-1]]).astype(np.int64),
        episode_lengths=all_lengths, info=demos.info)


def finetune(ckpt: str, demos: DemoSet, cfg: Any, out: Path, seed: int) -> None:
    """Continue flow-matching training of ``ckpt`` on ``demos`` (its normalisation kept) -> ``out``."""
    policy, env_cfg, embodiment, meta = load_policy(ckpt)
    data = SFTData(demos, ObservationBuilder(policy.cfg, embodiment), policy.cfg.action_horizon)
    torch.manual_seed(seed)
    train_sft(policy, data, cfg, seed=seed)
    save_policy(out, policy, env_cfg, embodiment,
                meta={**meta, "stage": "self_imitation", "parent": str(ckpt), "episodes": len(demos.episode_lengths)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True, help="the SFT checkpoint to start from")
    ap.add_argument("--demos", default="", help="its demo folder (default: the one its meta names)")
    ap.add_argument("--task", default="lift")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--minutes", type=float, default=0.0,
                    help="no new round once rollouts + fine-tuning have used this much (0: all rounds)")
    ap.add_argument("--rollouts", type=int, default=256, help="episodes rolled out per round")
    ap.add_argument("--steps", type=int, default=500, help="fine-tuning steps per round (both arms)")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--episodes", type=int, default=300, help="evaluation episodes (ODE)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--control", action=argparse.BooleanOptionalAction, default=True,
                    help="also run the demos-only arm (--no-control: self-imitation alone, twice the rounds per hour)")
    ap.add_argument("--preset", default="tabletop_fewshot_ppo_full", help="the rollout sampler's settings")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--work", default="runs/self_imitation")
    ap.add_argument("--name", default="self_imitation")
    args = ap.parse_args()
    cfg = load_config(args.preset, [f"sft.steps={args.steps}", f"sft.lr={args.lr}", *args.overrides])
    policy, env_cfg, embodiment, meta = load_policy(args.ckpt)
    demos = load_demos(args.demos or meta["demos"])
    sampler = build_sampler(cfg.sampler)
    env_cfg = dataclasses.replace(env_cfg, render=cfg.env.render, max_episode_steps=cfg.env.max_episode_steps)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    import ray

    from rlsys.actors.system import ensure_ray

    ensure_ray(cfg, num_cpus=args.workers)
    rows: list[dict[str, Any]] = []
    res_path = OUT / f"{args.name}.json"

    def evaluate(arm: str, rnd: int, path: str, extra: dict[str, Any]) -> None:
        r = run_eval_command(cfg, path, str(work / f"eval_{arm}_{rnd}"), args.episodes, [args.task],
                             workers=args.workers, sampler="ode")
        p, n = r["mean_success"], args.episodes
        rows.append({"arm": arm, "round": rnd, "success": p, "stderr": math.sqrt(p * (1 - p) / n), **extra})
        print(json.dumps(rows[-1]), flush=True)
        OUT.mkdir(exist_ok=True)
        res_path.write_text(json.dumps({"args": vars(args), "sampler": str(sampler), "rows": rows}, indent=2))

    t0 = time.time()
    evaluate("start", 0, args.ckpt, {"seconds": 0.0, "train_seconds": 0.0})
    kept: list[dict[str, Any]] = []
    current = {"self_imitation": args.ckpt, "control": args.ckpt}
    train_s = {"self_imitation": 0.0, "control": 0.0}  # rollouts + fine-tuning, evaluations excluded
    for rnd in range(1, args.rounds + 1):
        if args.minutes and train_s["self_imitation"] > args.minutes * 60:
            print(f"budget: {train_s['self_imitation'] / 60:.1f} of {args.minutes} min used; stopping", flush=True)
            break
        t_round = time.time()
        pol, *_ = load_policy(current["self_imitation"])
        seeds = [ROLLOUT_SEED_BASE + (rnd - 1) * args.rollouts + i for i in range(args.rollouts)]
        eps = collect(pol, env_cfg, embodiment, args.task, seeds, sampler, cfg.env.num_envs, args.workers, rnd)
        wins = [e for e in eps if e["success"]]
        kept += wins
        for e in eps:  # drop the frames of failures now
            if not e["success"]:
                e.clear()
        rollout_success = len(wins) / len(eps)
        train_s["self_imitation"] += time.time() - t_round
        print(f"round {rnd}: rollout success {rollout_success:.3f} ({len(wins)}/{len(eps)}), "
              f"kept {len(kept)} episodes", flush=True)
        arms = [("self_imitation", with_episodes(demos, kept))] + ([("control", demos)] if args.control else [])
        for arm, data in arms:
            out = work / f"{arm}_{rnd}"
            t_ft = time.time()
            finetune(current[arm], data, cfg, out, seed=rnd)
            train_s[arm] += time.time() - t_ft
            current[arm] = str(out)
            evaluate(arm, rnd, str(out), {"rollout_success": rollout_success if arm == "self_imitation" else None,
                                          "kept_episodes": len(kept) if arm == "self_imitation" else 0,
                                          "finetune_steps": rnd * args.steps, "seconds": time.time() - t0,
                                          "train_seconds": train_s[arm]})
    ray.shutdown()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    start = rows[0]
    for arm, style in (("self_imitation", "o-"), ("control", "s--")):
        r = [start] + [x for x in rows if x["arm"] == arm]
        if len(r) == 1:
            continue
        ax.errorbar([x["round"] for x in r], [x["success"] for x in r], yerr=[x["stderr"] for x in r],
                    fmt=style, capsize=3, label=arm.replace("_", " ") + (" (demos + own successes)"
                                                                        if arm == "self_imitation" else
                                                                        " (demos only, same steps)"))
    ax.set(xlabel=f"round ({args.rollouts} rollouts, {args.steps} fine-tuning steps each)",
           ylabel=f"ODE success, {args.episodes} episodes", ylim=(0, 1), title=f"self-imitation, {args.task}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(OUT / f"{args.name}.png", dpi=100)


if __name__ == "__main__":
    main()
