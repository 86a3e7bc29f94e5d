"""A MuJoCo "robot": the tabletop env served over the bridge's ROS 2 topics through DDS.

It behaves like a position-controlled arm behind ros2_control's forward position
controller: it publishes joint states at the command rate and camera images at
the camera rate, and tracks the newest command it received (holding the last
one when none arrives). It also publishes its full simulator state on the
simulation-only `sim_state` topic, for privileged scripted experts, and writes
a result file (task success, steps) when it stops.

    python -m vla.robot_bridge.sim_robot --task put_red_cube_in_bin --duration 30 --result out/sim.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vla.robot_bridge import msgs
from vla.robot_bridge.dds import DdsBridgeTransport, DdsConfig, loopback_uri


@dataclass(frozen=True)
class SimRobotConfig:
    task: str = "put_red_cube_in_bin"
    init_index: int = 0  # which of the task's stored evaluation initial states
    command_hz: int = 100
    camera_hz: int = 10
    duration_s: float = 30.0
    domain_id: int = 0

    def __post_init__(self):
        if self.command_hz % self.camera_hz:
            raise ValueError(f"command_hz ({self.command_hz}) must be a multiple of camera_hz ({self.camera_hz})")
        if not 0 <= self.init_index < 50:
            raise ValueError(f"init_index must be within 0..49, got {self.init_index}")


def serve(config: SimRobotConfig, result_path: Path | None = None) -> dict:
    """Run the simulated arm until `duration_s` passes or the task succeeds; return (and write) the result."""
    from vla.sim.init_states import load_init_states
    from vla.sim.tabletop_env import TabletopEnv

    env = TabletopEnv(task=config.task, control_hz=config.command_hz, render_images=False)
    obs, info = env.reset(seed=config.init_index,
                          options={"init_state": load_init_states(config.task)[config.init_index]})
    names = [*env.limits.joint_names, "gripper"]
    target = obs["observation.state"].astype(np.float64)
    period = 1.0 / config.command_hz
    camera_every = config.command_hz // config.camera_hz
    result = {"task": config.task, "init_index": config.init_index, "success": False, "steps": 0,
              "commands_received": 0}
    # Render once before publishing anything: creating the GL context can take a second in a cold process, and
    # inside the loop that pause would be a gap in the joint states that the bridge must treat as a fault.
    env.camera_images()
    with DdsBridgeTransport("robot", DdsConfig(domain_id=config.domain_id)) as transport:
        transport.publish_instruction(obs["task"])
        start = time.perf_counter()
        tick = 0
        while time.perf_counter() - start < config.duration_s and not info["success"]:
            command = transport.take_latest_command()
            if command is not None:
                target = msgs.multi_array_to_numpy(command)
                result["commands_received"] += 1
            obs, _, _, _, info = env.step(target.astype(np.float32))
            stamp = time.time_ns()
            transport.publish_joint_state(msgs.joint_state(names, obs["observation.state"], stamp_ns=stamp))
            transport.publish_sim_state(msgs.float64_multi_array(info["privileged"], labels=[config.task]))
            if tick % camera_every == 0:
                for camera, image in env.camera_images().items():
                    transport.publish_image(camera, msgs.image_msg(image, stamp_ns=stamp, frame_id=camera))
            tick += 1
            time.sleep(max(0.0, start + tick * period - time.perf_counter()))
        result.update(success=bool(info["success"]), steps=tick, sim_time_s=tick * period,
                      grasp_lost=int(info["grasp_lost"]))
        if result_path is not None:
            write_result(result, result_path)
        # Like a real arm, keep reporting the held position while the bridge notices the result and stops.
        for _ in range(config.command_hz // 2):
            transport.publish_joint_state(msgs.joint_state(names, obs["observation.state"], stamp_ns=time.time_ns()))
            time.sleep(period)
    env.close()
    return result


def write_result(result: dict, path: Path) -> None:
    """Write atomically: the bridge stops as soon as the file appears."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", default=SimRobotConfig.task)
    parser.add_argument("--init-index", type=int, default=SimRobotConfig.init_index)
    parser.add_argument("--command-hz", type=int, default=SimRobotConfig.command_hz)
    parser.add_argument("--camera-hz", type=int, default=SimRobotConfig.camera_hz)
    parser.add_argument("--duration", type=float, default=SimRobotConfig.duration_s)
    parser.add_argument("--domain-id", type=int, default=SimRobotConfig.domain_id)
    parser.add_argument("--result", type=Path, default=None)
    args = parser.parse_args()
    os.environ.setdefault("CYCLONEDDS_URI", loopback_uri())
    config = SimRobotConfig(args.task, args.init_index, args.command_hz, args.camera_hz, args.duration,
                            args.domain_id)
    print(json.dumps(serve(config, args.result)))


if __name__ == "__main__":
    main()
