"""`pi0edge check` and the check `pi0edge run` runs first: each wrong binding is refused with its field named,
the good one passes. RealSense devices come from a given enumeration (the DeviceProbe seam), never a fake
camera in a run path."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from pi0edge.errors import ConfigError
from pi0edge.manifest import TOKENIZER_NAME, load_manifest
from pi0edge.robot_io.config import robot_config_from_dict
from pi0edge.robot_io.contract_check import check_binding, check_start_state
from pi0edge.robot_io.devices import DeviceProbe, RealSenseDevice

JOINTS = [f"joint_{i}" for i in range(6)]
TRAINED_HW = {"base_0_rgb": (480, 640), "left_wrist_0_rgb": (480, 640), "right_wrist_0_rgb": (720, 1280)}
SERIAL_D435, SERIAL_D405 = "135522071234", "218622270567"


class GivenDevices(DeviceProbe):
    """This machine's devices as a test states them: RealSense serials and their color modes, present paths."""

    def __init__(self, realsense: dict[str, set], paths: tuple[str, ...] = ()):
        self.realsense = {s: RealSenseDevice(s, "Intel RealSense", frozenset(m)) for s, m in realsense.items()}
        self.paths = set(paths)

    def realsense_devices(self):
        return self.realsense

    def path_exists(self, path):
        return path in self.paths


# The D435 serial offers 640x480 only, the D405 serial 1280x720 only: a swap shows in the modes asked for.
DEVICES = GivenDevices({SERIAL_D435: {(640, 480, 30)}, SERIAL_D405: {(1280, 720, 30)}})


@pytest.fixture(scope="module")
def named_bundle(tmp_path_factory, tokenizer_path):
    """A tiny bundle exported from a LeRobot checkpoint whose config.json names the state and action dims and
    gives each camera's training size, as `pi0edge export` makes it."""
    from pi0edge.export.bundle import export_bundle
    from pi0edge.export.config import tiny
    from pi0edge.export.random_checkpoint import write_random_checkpoint

    root = tmp_path_factory.mktemp("named")
    checkpoint = write_random_checkpoint(root / "checkpoint", tiny("pi0"), tokenizer=False, robot_state_dim=6,
                                         robot_action_dim=6)
    config = json.loads((checkpoint / "config.json").read_text())
    for camera, (h, w) in TRAINED_HW.items():
        config["input_features"][f"observation.images.{camera}"]["shape"] = [3, h, w]
    config["input_features"]["observation.state"]["names"] = JOINTS
    config["output_features"]["action"]["names"] = {"motors": JOINTS}  # a LeRobot dataset's spelling
    (checkpoint / "config.json").write_text(json.dumps(config))
    export_bundle(checkpoint, root / "bundle", tokenizer=tokenizer_path, optimize=None)
    return root / "bundle"


def robot_dict(**override) -> dict:
    data = {
        "rate_hz": 20,
        "cameras": {
            "front": {"model_camera": "base_0_rgb", "kind": "realsense", "serial": SERIAL_D435, "width": 640,
                      "height": 480, "fps": 30},
            "wrist": {"model_camera": "right_wrist_0_rgb", "kind": "realsense", "serial": SERIAL_D405, "width": 1280,
                      "height": 720, "fps": 30},
        },
        "arm": {"kind": "sim", "dof": 6},
        "joints": {"names": list(JOINTS), "units": "rad"},
        "binding": {"masked_cameras": ["left_wrist_0_rgb"]},
        "estop": {"signal": False},
    }
    data.update(override)
    return data


def failed_fields(report) -> list[str]:
    return [f.field for f in report.failures]


def test_a_good_binding_passes_with_every_camera_bound_and_the_start_state_in_range(named_bundle):
    config = robot_config_from_dict(robot_dict())
    report, manifest = check_binding(config, named_bundle, DEVICES)
    check_start_state(config, manifest, [0.0] * 6, report)
    assert report.ok, report.table()
    passed = {f.field for f in report.findings if f.status == "pass"}
    assert {"cameras.front.serial", "cameras.wrist.serial", "cameras.front.width/height", "joints.names",
            "normalization", "tokenizer.file", "state"} <= passed


def test_swapped_serials_are_refused_by_the_modes_each_device_offers(named_bundle):
    data = robot_dict()
    data["cameras"]["front"]["serial"], data["cameras"]["wrist"]["serial"] = SERIAL_D405, SERIAL_D435
    report, _ = check_binding(robot_config_from_dict(data), named_bundle, DEVICES)
    assert failed_fields(report) == ["cameras.front.width/height/fps", "cameras.wrist.width/height/fps"]
    assert "offers 1280x720@30" in report.failures[0].message


def test_a_camera_set_to_the_swapped_device_size_is_refused_by_the_training_aspect_ratio(named_bundle):
    data = robot_dict()
    data["cameras"]["front"].update(serial=SERIAL_D405, width=1280, height=720)
    data["cameras"]["wrist"].update(serial=SERIAL_D435, width=640, height=480)
    report, _ = check_binding(robot_config_from_dict(data), named_bundle, DEVICES)
    assert failed_fields(report) == ["cameras.front.width/height", "cameras.wrist.width/height"]
    assert "trained on 640x480" in report.failures[0].message


def test_a_serial_that_is_not_connected_is_refused(named_bundle):
    data = robot_dict()
    data["cameras"]["front"]["serial"] = "999999999999"
    report, _ = check_binding(robot_config_from_dict(data), named_bundle, DEVICES)
    assert failed_fields(report) == ["cameras.front.serial"]
    assert SERIAL_D435 in report.failures[0].message  # what is connected instead


def test_an_unbound_policy_camera_and_a_camera_fed_to_no_policy_input_are_refused(named_bundle):
    data = robot_dict(binding={})
    data["cameras"]["wrist"]["model_camera"] = "wrist_cam"
    report, _ = check_binding(robot_config_from_dict(data), named_bundle, DEVICES)
    assert failed_fields(report) == ["cameras.wrist.model_camera", "cameras", "cameras"]
    assert "'left_wrist_0_rgb' (input 1" in report.failures[1].message


def test_wrong_dims_are_refused(named_bundle):
    five = robot_dict(joints={"names": JOINTS[:5]}, arm={"kind": "sim", "dof": 5})
    report, _ = check_binding(robot_config_from_dict(five), named_bundle, DEVICES)
    assert failed_fields(report) == ["joints.state_index"]
    assert "state dims [5] get no joint" in report.failures[0].message
    beyond = robot_dict(joints={"names": JOINTS, "action_index": [0, 1, 2, 3, 4, 6]})
    report, _ = check_binding(robot_config_from_dict(beyond), named_bundle, DEVICES)
    assert failed_fields(report) == ["joints.action_index"]


def test_joints_in_another_order_than_the_training_names_are_refused(named_bundle):
    swapped = [JOINTS[1], JOINTS[0], *JOINTS[2:]]
    report, _ = check_binding(robot_config_from_dict(robot_dict(joints={"names": swapped})), named_bundle, DEVICES)
    assert failed_fields(report) == ["joints.names"]
    assert "joints.names[0] = 'joint_1' is policy state dim 0, trained as 'joint_0'" in report.failures[0].message


def test_statistics_edited_after_export_are_refused(named_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(named_bundle, bundle)
    doc = yaml.safe_load((bundle / "bundle.yaml").read_text())
    doc["normalization"]["state"]["mean"][0] += 0.5  # another dataset's statistics pasted in
    (bundle / "bundle.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    report, _ = check_binding(robot_config_from_dict(robot_dict()), bundle, DEVICES)
    assert failed_fields(report) == ["normalization"]


def test_a_bundle_with_other_statistics_than_the_robot_was_set_up_with_is_refused(named_bundle):
    recorded = load_manifest(named_bundle).deployment
    data = robot_dict(binding={"masked_cameras": ["left_wrist_0_rgb"], "stats_sha256": "0" * 64,
                               "tokenizer_sha256": recorded.tokenizer_sha256})
    report, _ = check_binding(robot_config_from_dict(data), named_bundle, DEVICES)
    assert failed_fields(report) == ["binding.stats_sha256"]


def test_a_missing_tokenizer_is_refused(named_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(named_bundle, bundle)
    (bundle / TOKENIZER_NAME).unlink()
    report, manifest = check_binding(robot_config_from_dict(robot_dict()), bundle, DEVICES)
    assert manifest is None and failed_fields(report) == ["tokenizer.file"]
    assert "nothing is downloaded at run time" in report.failures[0].message


def test_a_replaced_tokenizer_is_refused(named_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(named_bundle, bundle)
    (bundle / TOKENIZER_NAME).write_bytes(b"another tokenizer")
    report, _ = check_binding(robot_config_from_dict(robot_dict()), bundle, DEVICES)
    assert failed_fields(report) == ["tokenizer.file"]


@pytest.mark.parametrize("device", [0, "/dev/video0"])
def test_a_camera_index_instead_of_a_stable_path_is_refused_unless_allowed(device):
    camera = {"model_camera": "base_0_rgb", "kind": "opencv", "device": device}
    with pytest.raises(ConfigError, match=r"cameras\.front\.device: device .* is an index.*/dev/v4l/by-id/"):
        robot_config_from_dict(robot_dict(cameras={"front": camera}))
    allowed = robot_config_from_dict(robot_dict(cameras={"front": {**camera, "allow_unstable_device": True}}))
    assert allowed.cameras[0].spec["device"] == device


def test_a_realsense_serial_written_as_a_number_is_refused():
    camera = {"model_camera": "base_0_rgb", "kind": "realsense", "serial": 135522071234}
    with pytest.raises(ConfigError, match=r"cameras\.front\.serial: .*quote it"):
        robot_config_from_dict(robot_dict(cameras={"front": camera}))


def test_a_by_id_path_that_is_not_present_is_refused(named_bundle):
    by_id = "/dev/v4l/by-id/usb-Logitech_C920_ABCD1234-video-index0"
    camera = {"model_camera": "base_0_rgb", "kind": "opencv", "device": by_id, "width": 640, "height": 480}
    config = robot_config_from_dict(robot_dict(cameras={"front": camera}, binding={
        "masked_cameras": ["left_wrist_0_rgb", "right_wrist_0_rgb"]}))
    report, _ = check_binding(config, named_bundle, GivenDevices({}))
    assert failed_fields(report) == ["cameras.front.device"]
    report, _ = check_binding(config, named_bundle, GivenDevices({}, paths=(by_id,)))
    assert report.ok, report.table()


def test_a_start_state_outside_the_statistics_is_refused_naming_the_joint(named_bundle):
    config = robot_config_from_dict(robot_dict())
    report, manifest = check_binding(config, named_bundle, DEVICES)
    check_start_state(config, manifest, [0.0, 0.0, 40.0, 0.0, 0.0, 0.0], report)
    assert failed_fields(report) == ["state"]
    assert "joint_2 = 40 (state dim 2" in report.failures[0].message


def test_an_older_bundle_without_a_deployment_record_loads_and_its_fields_are_unknown(named_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(named_bundle, bundle)
    doc = yaml.safe_load((bundle / "bundle.yaml").read_text())
    del doc["deployment"]
    (bundle / "bundle.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    assert load_manifest(bundle).deployment is None
    report, _ = check_binding(robot_config_from_dict(robot_dict()), bundle, DEVICES)
    assert report.ok, report.table()
    unknown = {f.field for f in report.findings if f.status == "unknown"}
    assert {"deployment", "joints.names", "cameras.front.width/height", "normalization"} <= unknown


def synthetic_robot(tmp_path, **override):
    """A robot YAML file with a synthetic camera (no device to enumerate) and the 6-joint sim arm."""
    data = robot_dict(**{"cameras": {"front": {"model_camera": "base_0_rgb", "kind": "synthetic", "width": 64,
                                               "height": 48}},
                         "binding": {"masked_cameras": ["left_wrist_0_rgb", "right_wrist_0_rgb"]}, **override})
    path = tmp_path / "robot.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_cli_check_passes_the_good_binding_and_prints_json(named_bundle, tmp_path, capsys):
    from pi0edge.cli import main

    assert main(["check", str(synthetic_robot(tmp_path)), str(named_bundle), "--json"]) == 0
    findings = {f["field"]: f for f in json.loads(capsys.readouterr().out)["findings"]}
    assert findings["state"]["status"] == "pass" and findings["cameras.front.width/height"]["status"] == "pass"


def test_cli_check_exits_2_naming_the_field_of_a_camera_index(named_bundle, tmp_path, capsys):
    from pi0edge.cli import main

    path = synthetic_robot(tmp_path, cameras={"front": {"model_camera": "base_0_rgb", "kind": "opencv",
                                                        "device": "/dev/video0"}})
    assert main(["check", str(path), str(named_bundle)]) == 2
    out = capsys.readouterr().out
    assert "FAIL    robot YAML" in out and "cameras.front.device: device '/dev/video0' is an index" in out


def test_run_refuses_a_wrong_binding_before_opening_the_arm(named_bundle, tmp_path, capsys, monkeypatch):
    import pi0edge.robot_io.arms as arms
    from pi0edge.cli import main

    monkeypatch.setattr(arms, "open_arm", lambda spec: pytest.fail("the arm was opened"))
    path = synthetic_robot(tmp_path, joints={"names": JOINTS[:5]}, arm={"kind": "sim", "dof": 5})
    assert main(["run", "--config", str(path), "--bundle", str(named_bundle), "--prompt", "pick"]) == 2
    err = capsys.readouterr().err
    assert "refused by the deployment check" in err and "joints.state_index: policy state dims [5]" in err


def test_run_refuses_a_start_state_outside_the_statistics_without_commanding_the_arm(named_bundle, tmp_path,
                                                                                     capsys, monkeypatch):
    from pi0edge.cli import main
    from pi0edge.robot_io.sim_arm import SimArm

    monkeypatch.setattr(SimArm, "command", lambda self, positions: pytest.fail("the arm was commanded"))
    path = synthetic_robot(tmp_path, arm={"kind": "sim", "dof": 6, "initial": [0, 0, 40, 0, 0, 0]})
    assert main(["run", "--config", str(path), "--bundle", str(named_bundle), "--prompt", "pick"]) == 2
    assert "state: the arm starts outside the statistics' range" in capsys.readouterr().err


def test_a_realsense_binding_without_pyrealsense2_fails_naming_the_extra(named_bundle, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pyrealsense2", None)  # not installed, whatever this machine has
    report, _ = check_binding(robot_config_from_dict(robot_dict()), named_bundle, DeviceProbe())
    assert failed_fields(report) == ["cameras.front.serial", "cameras.wrist.serial"]
    assert "pip install 'pi0edge[realsense]'" in report.failures[0].message


def test_a_prompt_format_this_runtime_does_not_write_is_refused(named_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(named_bundle, bundle)
    doc = yaml.safe_load((bundle / "bundle.yaml").read_text())
    doc["deployment"]["prompt_format"] = "<bos>Instruction: {prompt}\\n"
    (bundle / "bundle.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    report, _ = check_binding(robot_config_from_dict(robot_dict()), bundle, DEVICES)
    assert failed_fields(report) == ["deployment.prompt_format"]


def test_one_device_bound_to_two_cameras_is_refused(named_bundle):
    data = robot_dict()
    data["cameras"]["wrist"].update(serial=SERIAL_D435, width=640, height=480)
    report, _ = check_binding(robot_config_from_dict(data), named_bundle, DEVICES)
    assert "cameras.wrist.serial" in failed_fields(report)
    assert "also bound to cameras.front" in report.failures[0].message
