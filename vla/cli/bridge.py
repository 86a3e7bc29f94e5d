"""vla-bridge: run the robot bridge over DDS (or rclpy), optionally against the simulated arm."""

from __future__ import annotations

import json
from pathlib import Path

import hydra

from vla.cli import configs
from vla.cli.errors import user_errors
from vla.cli.policies import policy_factory
from vla.limits import CONF_DIR

configs.register()

TRANSPORTS = ("dds", "ros2")
EXPERT_CHUNK = 5  # 0.5 s at 10 Hz: longer than the inference delay the scheduler skips


@hydra.main(config_path=str(CONF_DIR), config_name="bridge", version_base="1.3")
def main(cfg: configs.BridgeConfig) -> None:
    with user_errors():
        if cfg.transport not in TRANSPORTS:
            raise ValueError(f"transport: expected one of {', '.join(TRANSPORTS)}, got '{cfg.transport}'")
        if cfg.command_hz < cfg.policy_hz or cfg.policy_hz <= 0:
            raise ValueError(f"command_hz ({cfg.command_hz}) must be >= policy_hz ({cfg.policy_hz}) > 0")
        robot = cfg.robot.name
        policy = policy_factory(cfg.policy, robot, round(cfg.policy_hz), expert_chunk=EXPERT_CHUNK)()
        if cfg.transport == "ros2" and cfg.sim:
            raise ValueError("sim: the simulated arm talks DDS; use transport=dds with sim=true")
        if cfg.transport == "ros2":
            from vla.robot_bridge.ros_node import run_ros_node

            run_ros_node(policy, robot, cfg)
            return
        if cfg.sim:
            if cfg.duration <= 0:
                raise ValueError("duration: sim=true needs a duration in seconds > 0")
            from vla.robot_bridge.sim_loop import run_sim_in_the_loop

            report = run_sim_in_the_loop(policy, robot=robot, task=cfg.task, init_index=cfg.init_index,
                                         duration_s=cfg.duration, out=Path(cfg.out), command_hz=cfg.command_hz,
                                         policy_hz=cfg.policy_hz, blend=cfg.blend, domain_id=cfg.domain_id,
                                         joint_state_timeout=cfg.joint_state_timeout,
                                         camera_timeout=cfg.camera_timeout)
            print(json.dumps({k: v for k, v in report.items() if k != "sim"}, indent=2))
            print(f"wrote {Path(cfg.out) / 'report.json'}")
            return
        from vla.robot_bridge.dds_node import run_dds_bridge

        run_dds_bridge(policy, robot, cfg)


if __name__ == "__main__":
    main()
