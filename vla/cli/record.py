"""vla-record: record episodes from a source into a LeRobotDataset v3."""

from __future__ import annotations

from pathlib import Path

import hydra

from vla.cli import configs
from vla.cli.errors import user_errors
from vla.limits import CONF_DIR

configs.register()

SOURCES = ("expert", "keyboard", "dds", "ros2")


@hydra.main(config_path=str(CONF_DIR), config_name="record", version_base="1.3")
def main(cfg: configs.RecordConfig) -> None:
    with user_errors():
        if configs.is_libero(cfg.env):
            if cfg.source != "expert":
                raise ValueError(f"source: LIBERO episodes come from the scripted expert (source=expert), "
                                 f"got '{cfg.source}'")
            if cfg.instruction != configs.RecordConfig.instruction:
                raise ValueError("instruction: LIBERO tasks have one instruction each; leave instruction at "
                                 f"'{configs.RecordConfig.instruction}'")
            env_kwargs = configs.env_kwargs(cfg.env)
        else:
            env_kwargs = configs.env_kwargs(cfg.env, instruction_mode=cfg.instruction)
        tasks = configs.env_tasks(cfg.env, cfg.task)
        root = Path(cfg.root)
        if cfg.source == "expert":
            from vla.data.record import record_expert

            summary = record_expert(tasks, cfg.episodes, root, env_kwargs, session_seed=cfg.seed, resume=cfg.resume,
                                    keep_failed=cfg.keep_failed, max_attempts_factor=cfg.max_attempts_factor)
            for task, n in summary.recorded.items():
                print(f"{task:40s} kept {n:4d} of {summary.attempts[task]:4d} attempts")
            print(f"{root}: {summary.total_episodes} episodes in the dataset")
        elif cfg.source == "keyboard":
            from vla.data.teleop import record_keyboard

            record_keyboard(tasks, root, env_kwargs, session_seed=cfg.seed, resume=cfg.resume)
        elif cfg.source == "dds":
            from vla.data.dds_record import record_from_dds

            total = record_from_dds(root, robot=cfg.env.robot, cameras=tuple(cfg.env.cameras),
                                    image_size=cfg.env.image_size, fps=cfg.env.control_hz, domain_id=cfg.domain_id,
                                    resume=cfg.resume, duration_s=cfg.duration,
                                    bag=Path(cfg.bag) if cfg.bag else None)
            print(f"{root}: {total} episodes in the dataset")
        elif cfg.source == "ros2":
            from vla.data.ros2_record import record_from_ros2

            record_from_ros2(root, cfg)
        else:
            raise ValueError(f"source: expected one of {', '.join(SOURCES)}, got '{cfg.source}'")


if __name__ == "__main__":
    main()
