"""The ROS 2 launch files run the commands they should, with keys the command-line apps accept.

ROS 2's `launch` package is not installable here, so a small stand-in for the names the launch files use is put
in `sys.modules`; it keeps what they pass and resolves `LaunchConfiguration`s the way `ros2 launch` does: the
arguments in declaration order, each one's default read from those declared before it, `name:=value` overriding.
"""

import importlib.util
import sys
import types
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from vla.cli import configs
from vla.limits import CONF_DIR

LAUNCH_DIR = Path(__file__).resolve().parent.parent / "launch"
PANDA_PARAMS = str(LAUNCH_DIR / "params" / "panda.yaml")


class LaunchConfiguration:
    def __init__(self, name):
        self.name = name


class DeclareLaunchArgument:
    def __init__(self, name, default_value=None, description=""):
        self.name, self.default_value, self.description = name, default_value, description


class ExecuteProcess:
    def __init__(self, cmd, **kwargs):
        self.cmd, self.kwargs = cmd, kwargs


class LaunchDescription:
    def __init__(self, entities):
        self.entities = list(entities)


@pytest.fixture
def fake_launch(monkeypatch):
    monkeypatch.setitem(sys.modules, "launch", types.SimpleNamespace(
        LaunchDescription=LaunchDescription,
        actions=types.SimpleNamespace(DeclareLaunchArgument=DeclareLaunchArgument, ExecuteProcess=ExecuteProcess),
        substitutions=types.SimpleNamespace(LaunchConfiguration=LaunchConfiguration),
    ))


def render(part, values: dict[str, str]) -> str:
    """Text, a substitution or a list of them, concatenated."""
    if isinstance(part, str):
        return part
    if isinstance(part, LaunchConfiguration):
        return values[part.name]
    return "".join(render(p, values) for p in part)


def command_line(launch_file: str, **arguments: str) -> list[str]:
    """The command the launch file runs for `ros2 launch <file> name:=value ...`."""
    spec = importlib.util.spec_from_file_location(launch_file.replace(".", "_"), LAUNCH_DIR / launch_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    values = {}
    for entity in description.entities:
        if isinstance(entity, DeclareLaunchArgument):
            assert entity.description, f"{launch_file}: argument {entity.name} has no description"
            values[entity.name] = arguments.pop(entity.name, None) or render(entity.default_value, values)
    assert not arguments, f"{launch_file} declares no argument {sorted(arguments)}"
    [process] = [entity for entity in description.entities if isinstance(entity, ExecuteProcess)]
    return [render(part, values) for part in process.cmd]


def composed(config_name: str, overrides: list[str]):
    """The app's config with these overrides, as hydra builds it at start-up (an unknown key fails here)."""
    configs.register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


def test_bridge_launch_runs_the_ros2_bridge_with_the_robots_params(fake_launch):
    cmd = command_line("bridge.launch.py")
    assert cmd == ["vla-bridge", "transport=ros2", "robot=panda", "policy=expert", f"ros_params={PANDA_PARAMS}"]
    assert Path(PANDA_PARAMS).is_file()
    cfg = composed("bridge", cmd[1:])
    assert (cfg.transport, cfg.robot.name, cfg.policy, cfg.ros_params) == ("ros2", "panda", "expert", PANDA_PARAMS)


def test_bridge_launch_arguments_override(fake_launch):
    cmd = command_line("bridge.launch.py", checkpoint="checkpoints/tabletop", params="/etc/vla/arm.yaml")
    assert cmd[3:] == ["policy=checkpoints/tabletop", "ros_params=/etc/vla/arm.yaml"]
    assert composed("bridge", cmd[1:]).policy == "checkpoints/tabletop"


def test_record_launch_runs_the_ros2_recorder(fake_launch):
    cmd = command_line("record.launch.py", root="data/robot_demos")
    assert cmd == ["vla-record", "source=ros2", "root=data/robot_demos", "env.robot=panda",
                   f"ros_params={PANDA_PARAMS}"]
    cfg = composed("record", cmd[1:])
    assert (cfg.source, cfg.root, cfg.env.robot, cfg.ros_params) == ("ros2", "data/robot_demos", "panda", PANDA_PARAMS)
