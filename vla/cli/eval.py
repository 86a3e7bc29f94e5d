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

configs.register()


@hydra.main(config_path=str(CONF_DIR), config_name="eval", version_base="1.3")
def main(cfg: configs.EvalConfig) -> None:
    with user_errors():
        common = {"episodes": cfg.episodes, "num_envs": cfg.num_envs, "seed": cfg.seed,
                  "videos_per_task": cfg.videos_per_task, "policy_threads": cfg.policy_threads}
        if configs.is_libero(cfg.env):
            if cfg.instruction != "canonical" or cfg.perturbation.kind != "none":
                raise ValueError("instruction and perturbation: LIBERO tasks have one instruction and no "
                                 "perturbations; leave them at canonical and none")
            kwargs = configs.env_kwargs(cfg.env)
            suite = libero_suite(kwargs)
        else:
            kwargs = configs.env_kwargs(
                cfg.env, instruction_mode=cfg.instruction,
                perturbation=Perturbation(kind=cfg.perturbation.kind, step=cfg.perturbation.step))
            suite = None  # EvalSettings' default: the tabletop suite
        settings = EvalSettings(tasks=configs.env_tasks(cfg.env, cfg.tasks), env_kwargs=kwargs, suite=suite, **common)
        make_policy = policy_factory(cfg.policy, cfg.env.robot, cfg.env.control_hz, env=cfg.env.name)
        out = Path(cfg.out)
        evaluate(make_policy, settings, out, policy_name=cfg.policy)
        print((out / "report.md").read_text())
        print(f"wrote {out / 'report.json'}, {out / 'report.md'}, {out / 'success.png'}, {out / 'videos'}/")


if __name__ == "__main__":
    main()
