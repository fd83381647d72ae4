"""The training spine: sync weights -> collect -> advantages + update -> log / eval / checkpoint.

With ``rollout.overlap`` the driver collects the next iteration's segments while the learner's
update runs (in its own actor), under the weights the update started from: those segments arrive
one version stale, which ``rollout.max_staleness >= 1`` accepts.

A learner that dies (``LearnerLost``) is restored from the last checkpoint with its optimiser state
and new weight version; the iteration it died in starts over (its segments, collected under weights
that no longer exist, are dropped), and the updates since that checkpoint are counted as lost.

Read this first. Each line is one phase of an iteration (docs/algorithms.md, section 8).
"""

from __future__ import annotations

import time
from typing import Any

from rlsys import metrics as M
from rlsys.progress import Progress
from rlsys.types import LearnerLost

MAX_LEARNER_RECOVERIES = 5  # in a row, without a finished iteration between them


def train_loop(run: Any, system: Any, start_iteration: int) -> dict[str, Any]:
    """``run``: rlsys.train.Run (config, logger, eval, checkpoints); ``system``: actors.RaySystem."""
    cfg = run.cfg
    last: dict[str, Any] = {}
    start = time.time()
    ahead: tuple[list[Any], float] | None = None  # rollout.overlap: the next iteration's segments
    lost = {"updates": 0, "in_a_row": 0}
    it = start_iteration
    with Progress(f"train {cfg.algo.name}", total=cfg.iterations) as bar:
        bar.advance(start_iteration)
        while it < cfg.iterations:
            try:
                row, out_of_time, ahead = _iteration(run, system, it, start, ahead)
            except LearnerLost as e:
                ahead = None  # collected under the lost weights
                lost["in_a_row"] += 1
                if lost["in_a_row"] > MAX_LEARNER_RECOVERIES:
                    raise
                state, at = run.restore_learner_state()  # the newest checkpoint, else the initial weights
                version = system.recover_learner(state)
                lost["updates"] += it - at
                gone = f"the updates of iterations {at + 1}-{it} are lost" if it > at else "no update is lost"
                print(f"\ntrain: {e} in iteration {it + 1}; restarted from the checkpoint of iteration {at} "
                      f"with its optimiser state ({gone}), weights re-broadcast as version {version}; "
                      f"iteration {it + 1} starts over", flush=True)
                continue
            lost["in_a_row"] = 0
            row[M.LEARNER_RESTARTS] = system.learner_restarts
            row[M.UPDATES_LOST] = lost["updates"]
            run.logger.log(it + 1, row)
            last = row
            bar.advance(status=f"success {row.get(M.SUCCESS_RATE, 0):.2f} "
                               f"eval {row.get(M.EVAL_SUCCESS, float('nan')):.2f}")
            it += 1
            if out_of_time:
                break
    return last


def _iteration(run: Any, system: Any, it: int, start: float, ahead: tuple[list[Any], float] | None
               ) -> tuple[dict[str, Any], bool, tuple[list[Any], float] | None]:
    """One iteration (0-based ``it``) -> (its metrics row, out of time, the segments collected ahead
    for the next one under rollout.overlap). ``ahead``: this iteration's, collected during the last."""
    cfg = run.cfg
    t0 = time.perf_counter()
    version, broadcast_s = system.sync_weights()  # 1 learner -> ray.put once -> every worker
    t1 = time.perf_counter()
    if ahead is None:
        segments = system.collect(it)  # 2 env workers <-> inference workers, chunk by chunk
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
        ahead = (system.collect(it + 1), time.perf_counter() - tc)  # meanwhile, under weights `version`
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
    return row, out_of_time, ahead


def _out_of_time(cfg: Any, start: float) -> bool:
    return cfg.max_minutes > 0 and time.time() - start > 60 * cfg.max_minutes
