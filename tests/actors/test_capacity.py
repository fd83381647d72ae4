"""The placement check's decisions (go / wait / fail) from node and node-type resources, and the
bundles it derives from a config: the same requests the actors make."""

import pytest
from kit import small_cfg

from rlsys.actors.capacity import pack, plan_bundles, verdict


def test_plan_bundles_are_the_actor_requests(tmp_path):
    cfg = small_cfg(tmp_path, "placement.mode=disaggregated", "rollout.num_env_workers=3")
    roles = plan_bundles(cfg)
    assert [r for r, _ in roles] == ["learner", "inference worker 0", "env worker 0", "env worker 1", "env worker 2"]
    assert dict(roles)["env worker 2"] == {"CPU": 1.0, "sim": 1.0} and dict(roles)["learner"] == {"CPU": 1.0}
    gpu = plan_bundles(small_cfg(tmp_path, "placement.use_gpu=true", "placement.learner_gpus=0.5"))
    assert [r for r, _ in gpu] == ["learner", "env worker 0", "env worker 1"]  # collocated: no inference actor
    assert dict(gpu)["learner"] == {"CPU": 1.0, "GPU": 0.5} and dict(gpu)["env worker 0"] == {"CPU": 1.0}


SIM = {"CPU": 1.0, "sim": 1.0}
PLAN = [("learner", {"CPU": 1.0}), ("inference worker 0", {"CPU": 1.0}), *[(f"env worker {i}", SIM) for i in range(3)]]


def test_pack_places_each_bundle_on_one_node():
    assert pack(PLAN, [{"CPU": 5.0, "sim": 3.0}]) is None
    assert pack(PLAN, [{"CPU": 2.0}, {"CPU": 3.0, "sim": 3.0}]) is None  # policy node + sim node
    assert pack(PLAN, [{"CPU": 2.0}, {"CPU": 2.0, "sim": 8.0}]) == "env worker 2"  # CPUs on the sim node run out
    assert pack([("learner", {"CPU": 1.0, "GPU": 1.0})], [{"CPU": 8.0}, {"GPU": 1.0}]) == "learner"  # not split


@pytest.mark.parametrize("nodes,types,decision,words", [
    ([{"CPU": 8.0, "sim": 8.0}], None, "go", ""),
    # the README recipe on a 2-core machine: `ray start --head --resources='{"sim": 8}'`
    ([{"CPU": 2.0, "sim": 8.0, "memory": 1e9}], [], "fail",
     "the run needs {CPU: 5, sim: 3} in all (learner {CPU: 1}, inference worker {CPU: 1}, 3 x env worker {CPU: 1, "
     "sim: 1}): env worker 2 needs {CPU: 1, sim: 1}; the cluster's nodes have {CPU: 2, sim: 8}, and no autoscaler "
     "can add more"),
    ([{"CPU": 2.0, "sim": 8.0}], None, "wait", "does not say whether an autoscaler may add more"),
    ([{"CPU": 1.0}], [({"CPU": 2.0, "sim": 2.0}, 2), ({"CPU": 2.0, "GPU": 1.0}, 1)], "wait",
     "the autoscaler may add 2 x {CPU: 2, sim: 2}, 1 x {CPU: 2, GPU: 1}"),
    ([{"CPU": 1.0}], [({"CPU": 2.0, "sim": 2.0}, 1)], "fail",
     "neither the nodes up now ({CPU: 1}) nor the autoscaler's node types (1 x {CPU: 2, sim: 2}) can hold"),
    ([{"CPU": 1.0}], [({"CPU": 4.0, "sim": 4.0}, -1)], "wait", "any number x {CPU: 4, sim: 4}"),
])
def test_verdict(nodes, types, decision, words):
    got, why = verdict(PLAN, nodes, types)
    assert got == decision and words in why, why
