"""Record teleop demonstrations from the robot's ROS 2 topics into a LeRobotDataset v3.

    ros2 launch launch/record.launch.py robot:=panda root:=data/robot

Runs `vla-record source=ros2 ...`, which must be on PATH (activate the environment vla is installed in before
`ros2 launch`). Each episode's instruction is the latest message on the instruction topic; start, stop, fail and
discard arrive on the control topic. Topics come from the vla_record section of the parameters file.
"""

from pathlib import Path

from launch import LaunchDescription, actions, substitutions

PARAMS_DIR = Path(__file__).resolve().parent / "params"


def generate_launch_description() -> LaunchDescription:
    robot, root, params = (substitutions.LaunchConfiguration(name) for name in ("robot", "root", "params"))
    return LaunchDescription([
        actions.DeclareLaunchArgument("robot", default_value="panda", description="the arm: conf/robot/<robot>.yaml"),
        actions.DeclareLaunchArgument("root", default_value="data/robot", description="dataset directory"),
        actions.DeclareLaunchArgument("params", default_value=[f"{PARAMS_DIR}/", robot, ".yaml"],
                                      description="ROS 2 parameters of vla_record (topics, cameras)"),
        actions.ExecuteProcess(
            cmd=["vla-record", "source=ros2", ["root=", root], ["env.robot=", robot], ["ros_params=", params]],
            output="screen",
        ),
    ])
