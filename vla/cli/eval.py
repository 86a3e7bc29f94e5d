"""vla-eval: evaluate a policy on the tabletop suite or a LIBERO suite and write report, videos and plot."""

from __future__ import annotations

from pathlib import Path

import hydra

from vla.cli import configs
from vla.cli.errors import user_errors
from vla.cli.policies import policy_factory
from vla.limits import CONF_DIR
from vla.sim.evaluate import EvalSettings, evaluate, libero_suite
from vla.sim.tabletop_env import Perturbation
from vla.sim.tasks import resolve_tasks

configs.register()


@hydra.main(config_path=str(CONF_DIR), config_name="eval", version_base="1.3")
def main(cfg: configs.EvalConfig) -> None:
    with user_errors():
        common = {"episodes": cfg.episodes, "num_envs": cfg.num_envs, "seed": cfg.seed,
                  "videos_per_task": cfg.videos_per_task}
        if configs.is_libero(cfg.env):
            from vla.sim.libero_env import resolve_libero_tasks

            if cfg.instruction != "canonical" or cfg.perturbation.kind != "none":
                raise ValueError("instruction and perturbation: LIBERO tasks have one instruction and no "
                                 "perturbations; leave them at canonical and none")
            kwargs = configs.env_kwargs(cfg.env)
            settings = EvalSettings(tasks=resolve_libero_tasks(cfg.env.name, cfg.tasks), env_kwargs=kwargs,
                                    suite=libero_suite(kwargs), **common)
        else:
            settings = EvalSettings(
                tasks=resolve_tasks(cfg.tasks),
                env_kwargs=configs.env_kwargs(
                    cfg.env, instruction_mode=cfg.instruction,
                    perturbation=Perturbation(kind=cfg.perturbation.kind, step=cfg.perturbation.step),
                ),
                **common,
            )
        make_policy = policy_factory(cfg.policy, cfg.env.robot, cfg.env.control_hz, env=cfg.env.name)
        out = Path(cfg.out)
        evaluate(make_policy, settings, out, policy_name=cfg.policy)
        print((out / "report.md").read_text())
        print(f"wrote {out / 'report.json'}, {out / 'report.md'}, {out / 'success.png'}, {out / 'videos'}/")


if __name__ == "__main__":
    main()
