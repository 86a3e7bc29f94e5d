"""Start the robot bridge as a ROS 2 node: the policy drives the arm through its safety filter.

    ros2 launch launch/bridge.launch.py robot:=panda checkpoint:=expert

Runs `vla-bridge transport=ros2 ...`, which must be on PATH (activate the environment vla is installed in before
`ros2 launch`). Topics, cameras and the command interface come from the parameters file; limits and safety
settings come from conf/robot/<robot>.yaml alone.
"""

from pathlib import Path

from launch import LaunchDescription, actions, substitutions

PARAMS_DIR = Path(__file__).resolve().parent / "params"


def generate_launch_description() -> LaunchDescription:
    robot, checkpoint, params = (substitutions.LaunchConfiguration(name) for name in ("robot", "checkpoint", "params"))
    return LaunchDescription([
        actions.DeclareLaunchArgument("robot", default_value="panda", description="the arm: conf/robot/<robot>.yaml"),
        actions.DeclareLaunchArgument("checkpoint", default_value="expert",
                                      description="the policy: expert (scripted) or a checkpoint directory"),
        actions.DeclareLaunchArgument("params", default_value=[f"{PARAMS_DIR}/", robot, ".yaml"],
                                      description="ROS 2 parameters of vla_bridge (topics, cameras, commands)"),
        actions.ExecuteProcess(
            cmd=["vla-bridge", "transport=ros2", ["robot=", robot], ["policy=", checkpoint], ["ros_params=", params]],
            output="screen",
        ),
    ])
