"""The training spine: sync weights -> collect -> advantages + update -> log / eval / checkpoint.

Read this first. Everything it calls is one step of the data flow in ARCHITECTURE.md.
"""

from __future__ import annotations

import time
from typing import Any

from rlsys import metrics as M
from rlsys.progress import Progress


def train_loop(run: Any, system: Any, start_iteration: int) -> dict[str, Any]:
    """``run``: rlsys.train.Run (config, logger, eval, checkpoints); ``system``: actors.RaySystem."""
    cfg = run.cfg
    last: dict[str, Any] = {}
    start = time.time()
    with Progress(f"train {cfg.algo.name}", total=cfg.iterations) as bar:
        bar.advance(start_iteration)
        for it in range(start_iteration, cfg.iterations):
            t0 = time.perf_counter()
            version, broadcast_s = system.sync_weights()  # 1 learner -> ray.put once -> every worker
            t1 = time.perf_counter()
            segments = system.collect()  # 2 env workers <-> inference workers, chunk by chunk
            t2 = time.perf_counter()
            learner = system.update(segments)  # 3-5 advantages + PPO/GRPO epochs on recomputed logp
            t3 = time.perf_counter()
            out_of_time = cfg.max_minutes > 0 and time.time() - start > 60 * cfg.max_minutes
            final = out_of_time or it + 1 == cfg.iterations
            row = run.rollout_metrics(segments, system, t2 - t1)
            row.update({M.LEARNER_KEYS[k]: v for k, v in learner.items() if k in M.LEARNER_KEYS})
            row.update({M.WEIGHT_VERSION: version, M.BROADCAST_S: broadcast_s, M.COLLECT_S: t2 - t1,
                        M.UPDATE_S: t3 - t2, M.ITERATION_S: time.perf_counter() - t0})
            if (it + 1) % cfg.eval_every == 0 or final:
                row[M.EVAL_SUCCESS] = run.evaluate(system, it + 1)  # 6 ODE evaluation
            if (it + 1) % cfg.checkpoint_every == 0 or final:
                run.checkpoint(system, it + 1)  # atomic
            run.logger.log(it + 1, row)
            last = row
            bar.advance(status=f"success {row.get(M.SUCCESS_RATE, 0):.2f} "
                               f"eval {row.get(M.EVAL_SUCCESS, float('nan')):.2f}")
            if out_of_time:
                break
    return last
