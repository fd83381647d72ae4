"""Can this Ray cluster place the run? Checked before any actor, SFT or run directory exists.

Ray leaves an actor whose resources no node has pending forever, and says so only in ``ray status``.
On a cluster rlsys did not start (``RAY_ADDRESS``, ``ray job submit``), the driver compares the
plan's requests with what the cluster's nodes have and what its autoscaler may add:

- fits the nodes there now: go;
- fits only nodes an autoscaler may still launch, or the cluster does not say whether it has an
  autoscaler: ask the autoscaler for the plan's bundles (``ray.autoscaler.sdk.request_resources``:
  an autoscaler scales on pending demand, and no actor exists yet) and wait, printing what is
  pending, for at most ``placement.resource_wait_s``;
- fits neither (no autoscaler, or one whose node types cannot hold it): fail at once, naming the
  request that cannot be met and what the cluster offers.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from rlsys.config import ConfigError, TrainConfig

Bundle = dict[str, float]


def plan_bundles(cfg: TrainConfig) -> list[tuple[str, Bundle]]:
    """(role, resources) of every actor the run starts, as ``actor_options`` asks Ray for them."""
    from rlsys.actors.system import actor_options

    def bundle(opts: dict[str, Any]) -> Bundle:
        out = {"CPU": float(opts.get("num_cpus", 0))}
        if opts.get("num_gpus"):
            out["GPU"] = float(opts["num_gpus"])
        out.update({k: float(v) for k, v in opts.get("resources", {}).items()})
        return {k: v for k, v in out.items() if v > 0}

    r = cfg.rollout
    roles = [("learner", bundle(actor_options(cfg, "learner")))]
    if cfg.placement.mode != "collocated":
        infer = bundle(actor_options(cfg, "infer"))
        roles += [(f"inference worker {i}", infer) for i in range(r.num_inference_workers)]
    roles += [(f"env worker {i}", bundle(actor_options(cfg, "env"))) for i in range(r.num_env_workers)]
    return roles


def _fmt(res: Bundle) -> str:
    noise = ("memory", "object_store_memory")  # every node has them; the plan never asks for them
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(res.items())
                           if k not in noise and not k.startswith(("node:", "accelerator_type:"))) + "}"


def _roles(bundles: list[tuple[str, Bundle]]) -> str:
    """``learner {CPU: 1}, 4 x env worker {CPU: 1, sim: 1}``: the plan's requests, grouped."""
    groups: dict[tuple[str, str], int] = {}
    for role, b in bundles:
        key = (role.rstrip("0123456789").strip(), _fmt(b))
        groups[key] = groups.get(key, 0) + 1
    return ", ".join(f"{n} x {r} {b}" if n > 1 else f"{r} {b}" for (r, b), n in groups.items())


def pack(bundles: list[tuple[str, Bundle]], nodes: list[Bundle]) -> str | None:
    """Place every bundle on one node each (largest first, first fit). None if all fit, else the role
    of the first bundle that does not."""
    free = [dict(n) for n in nodes]
    for role, b in sorted(bundles, key=lambda rb: -sum(rb[1].values())):
        node = next((f for f in free if all(f.get(k, 0.0) >= v - 1e-9 for k, v in b.items())), None)
        if node is None:
            return role
        for k, v in b.items():
            node[k] -= v
    return None


def verdict(bundles: list[tuple[str, Bundle]], nodes: list[Bundle],
            node_types: list[tuple[Bundle, int]] | None) -> tuple[str, str]:
    """("go" | "wait" | "fail", why). ``nodes``: the alive nodes' total resources; ``node_types``: the
    autoscaler's node types as (resources, max count; -1 unbounded): [] when the cluster says it has
    no autoscaler, None when it does not say."""
    role = pack(bundles, nodes)
    if role is None:
        return "go", ""
    need = dict(bundles)[role]
    total: Bundle = {}
    for _, b in bundles:
        for k, v in b.items():
            total[k] = total.get(k, 0.0) + v
    have = "; ".join(_fmt(n) for n in nodes) or "no nodes"
    role = f"the run needs {_fmt(total)} in all ({_roles(bundles)}): {role}"
    if node_types:  # could the nodes there plus the most the autoscaler may launch hold it?
        grown = list(nodes) + [dict(res) for res, count in node_types
                               for _ in range(len(bundles) if count < 0 else min(count, len(bundles)))]
        if pack(bundles, grown) is None:
            return "wait", (f"{role} needs {_fmt(need)}; the nodes up now have {have}; the autoscaler may add "
                            + ", ".join(f"{'any number' if c < 0 else c} x {_fmt(r)}" for r, c in node_types))
        offers = ", ".join(f"{'any number' if c < 0 else c} x {_fmt(r)}" for r, c in node_types)
        return "fail", (f"{role} needs {_fmt(need)}, which neither the nodes up now ({have}) nor the "
                        f"autoscaler's node types ({offers}) can hold")
    if node_types is None:
        return "wait", (f"{role} needs {_fmt(need)}; the nodes up now have {have}, and the cluster does not "
                        "say whether an autoscaler may add more")
    return "fail", f"{role} needs {_fmt(need)}; the cluster's nodes have {have}, and no autoscaler can add more"


def cluster_nodes() -> list[Bundle]:
    import ray

    return [{k: float(v) for k, v in n["Resources"].items() if not k.startswith("node:")}
            for n in ray.nodes() if n.get("Alive")]


def autoscaler_node_types() -> list[tuple[Bundle, int]] | None:
    """The node types an autoscaler may launch: from the cluster config an autoscaler publishes ([] if
    it allows no more nodes), or [] for a fixed cluster (``ray start`` without an autoscaling config:
    Ray's monitor then runs a read-only provider whose node types are the nodes themselves,
    ``node_<id>``). None where the cluster says neither."""
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:  # a Ray without this call: unknown
        config = None
    if config is not None:
        return [({k: float(v) for k, v in g.resources.items()}, int(g.max_count))
                for g in config.node_group_configs if g.max_count != 0]
    try:
        from ray._private import ray_constants
        from ray.experimental.internal_kv import _internal_kv_get

        status = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
        mapping = json.loads(status or b"{}").get("autoscaler_report", {}).get("node_type_mapping") or {}
    except Exception:  # no status yet, or another format: unknown
        return None
    if mapping and all(kind == f"node_{node}" for node, kind in mapping.items()):
        return []
    return None


def hint(cfg: TrainConfig) -> str:
    r, p = cfg.rollout, cfg.placement
    tips = [f"fewer workers (--set rollout.num_env_workers=N, now {r.num_env_workers})"]
    if p.mode != "collocated":
        tips.append("placement.mode=collocated (no separate inference workers, no sim resource)")
    return "Ask for less: " + ", or ".join(tips) + "; or give the cluster more nodes."


def check_cluster(cfg: TrainConfig, out: Any = sys.stdout) -> None:
    """Before any actor starts on a cluster rlsys did not start: go, wait (printing what is pending) or
    raise ConfigError naming the request that cannot be met."""
    bundles = plan_bundles(cfg)
    deadline = time.time() + cfg.placement.resource_wait_s
    last, requested = "", False
    try:
        while True:
            decision, why = verdict(bundles, cluster_nodes(), autoscaler_node_types())
            if decision == "go":
                return
            if decision == "fail":
                raise ConfigError(f"placement: this Ray cluster cannot place the run: {why}. {hint(cfg)}")
            if not requested:
                from ray.autoscaler.sdk import request_resources

                request_resources(bundles=[b for _, b in bundles])
                requested = True
            left = deadline - time.time()
            if left <= 0:
                raise ConfigError(f"placement: gave up after placement.resource_wait_s="
                                  f"{cfg.placement.resource_wait_s:g} s waiting for resources: {why}. {hint(cfg)}")
            if why != last:
                print(f"train: waiting for resources: {why} (asked the autoscaler for them; giving up in "
                      f"{left:.0f} s: placement.resource_wait_s)", file=out, flush=True)
                last = why
            time.sleep(min(2.0, max(left, 0.1)))
    finally:
        if requested:  # the actors, once created, keep their nodes; do not pin the cluster's size
            from ray.autoscaler.sdk import request_resources

            request_resources(bundles=[])
