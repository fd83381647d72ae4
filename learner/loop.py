"""The training spine: sync weights -> collect -> advantages + update -> log / eval / checkpoint.

With ``rollout.overlap`` the driver collects the next iteration's segments while the learner's
update runs (in its own actor), under the weights the update started from: those segments arrive
one version stale, which ``rollout.max_staleness >= 1`` accepts.

Read this first. Each line is one phase of an iteration (docs/algorithms.md, section 8).
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
    ahead: tuple[list[Any], float] | None = None  # rollout.overlap: the next iteration's segments
    with Progress(f"train {cfg.algo.name}", total=cfg.iterations) as bar:
        bar.advance(start_iteration)
        for it in range(start_iteration, cfg.iterations):
            t0 = time.perf_counter()
            version, broadcast_s = system.sync_weights()  # 1 learner -> ray.put once -> every worker
            t1 = time.perf_counter()
            if ahead is None:
                segments = system.collect()  # 2 env workers <-> inference workers, chunk by chunk
                collect_s = time.perf_counter() - t1
            else:  # collected during the last update, under the weights one version behind
                segments, collect_s = ahead
                ahead = None
            t2 = time.perf_counter()
            # 3-5 in the learner: the algorithm's advantages, then epochs x minibatches of its loss (Learner.update)
            update = system.start_update(segments)
            overlap_s = None
            if cfg.rollout.overlap and it + 1 < cfg.iterations and not _out_of_time(cfg, start):
                tc = time.perf_counter()
                ahead = (system.collect(), time.perf_counter() - tc)  # meanwhile, under weights `version`
            learner = system.finish_update(update)
            t3 = time.perf_counter()
            if ahead is not None:
                overlap_s = min(ahead[1], learner.get("update_seconds", t3 - t2))
            out_of_time = _out_of_time(cfg, start)
            final = out_of_time or it + 1 == cfg.iterations
            row = run.rollout_metrics(segments, system, collect_s)
            row.update({M.LEARNER_KEYS[k]: v for k, v in learner.items() if k in M.LEARNER_KEYS})
            row.update({M.WEIGHT_VERSION: version, M.BROADCAST_S: broadcast_s, M.COLLECT_S: collect_s,
                        M.UPDATE_S: t3 - t2, M.ITERATION_S: time.perf_counter() - t0})
            if overlap_s is not None:
                row[M.OVERLAP_S] = overlap_s
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


def _out_of_time(cfg: Any, start: float) -> bool:
    return cfg.max_minutes > 0 and time.time() - start > 60 * cfg.max_minutes
