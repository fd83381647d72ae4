"""Cluster launcher YAMLs validate against Ray's own schema; KubeRay manifests have the pools."""

from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_onprem_launcher_yaml_passes_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load((DEPLOY / "cluster" / "onprem.yaml").read_text())
    validate_config(prepare_config(cfg))
    assert any('"sim"' in c for c in cfg["worker_start_ray_commands"])
    assert any("--num-cpus=0" in c and "127.0.0.1" in c for c in cfg["head_start_ray_commands"])


def test_cloud_launcher_yaml_passes_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load((DEPLOY / "cluster" / "aws.yaml").read_text())
    validate_config(prepare_config(cfg))
    types = cfg["available_node_types"]
    assert types[cfg["head_node_type"]]["resources"]["CPU"] == 0  # nothing scheduled on the head
    assert types["sim_pool"]["resources"]["sim"] > 0 and types["gpu_pool"]["resources"]["GPU"] >= 1
    assert any("--dashboard-host=127.0.0.1" in c for c in cfg["head_start_ray_commands"])


def test_schema_catches_an_unknown_node_type_field():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load((DEPLOY / "cluster" / "aws.yaml").read_text())
    cfg["available_node_types"]["sim_pool"]["min_wrokers"] = 1
    with pytest.raises(Exception, match="min_wrokers"):
        validate_config(prepare_config(cfg))
    cfg = yaml.safe_load((DEPLOY / "cluster" / "aws.yaml").read_text())
    cfg["head_node_type"] = "no_such_type"
    with pytest.raises(ValueError, match="head_node_type"):
        validate_config(prepare_config(cfg))


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_kuberay_manifests_have_the_pools(name):
    doc = yaml.safe_load((DEPLOY / "kuberay" / name).read_text())
    assert doc["apiVersion"] == "ray.io/v1"
    spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert '"sim"' in groups["sim-pool"]["rayStartParams"]["resources"].replace('\\"', '"')
    gpu = groups["gpu-pool"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert gpu["nvidia.com/gpu"] == 1
    if doc["kind"] == "RayJob":
        assert "rlsys train" in doc["spec"]["entrypoint"]
