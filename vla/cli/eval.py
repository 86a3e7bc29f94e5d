"""vla-eval: evaluate a policy on the tabletop suite and write report, videos and plot."""

from __future__ import annotations

from pathlib import Path

import hydra

from vla.cli import configs
from vla.cli.errors import user_errors
from vla.cli.policies import policy_factory
from vla.limits import CONF_DIR
from vla.sim.evaluate import EvalSettings, evaluate
from vla.sim.tabletop_env import Perturbation
from vla.sim.tasks import resolve_tasks

configs.register()


@hydra.main(config_path=str(CONF_DIR), config_name="eval", version_base="1.3")
def main(cfg: configs.EvalConfig) -> None:
    with user_errors():
        settings = EvalSettings(
            tasks=resolve_tasks(cfg.tasks),
            episodes=cfg.episodes,
            num_envs=cfg.num_envs,
            seed=cfg.seed,
            videos_per_task=cfg.videos_per_task,
            env_kwargs=configs.env_kwargs(
                cfg.env, instruction_mode=cfg.instruction,
                perturbation=Perturbation(kind=cfg.perturbation.kind, step=cfg.perturbation.step),
            ),
        )
        make_policy = policy_factory(cfg.policy, cfg.env.robot, cfg.env.control_hz)
        out = Path(cfg.out)
        evaluate(make_policy, settings, out, policy_name=cfg.policy)
        print((out / "report.md").read_text())
        print(f"wrote {out / 'report.json'}, {out / 'report.md'}, {out / 'success.png'}, {out / 'videos'}/")


if __name__ == "__main__":
    main()
