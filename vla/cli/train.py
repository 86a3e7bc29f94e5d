"""vla-train: train a policy on a LeRobotDataset v3 (one process, or many through `accelerate launch`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import hydra
from omegaconf import OmegaConf

from vla.cli import configs
from vla.cli.errors import user_errors
from vla.limits import CONF_DIR
from vla.train.settings import TrainSettings

configs.register()
# conf/train/train.yaml puts conf/ on hydra's search path through this, wherever vla-train runs from.
OmegaConf.register_new_resolver("vla_conf_dir", lambda: str(CONF_DIR), replace=True)


def sim_evaluator(cfg: configs.TrainConfig):
    """Evaluate a checkpoint on every task of the env (`eval_episodes` each); returns the average success."""
    from vla.cli.policies import policy_factory
    from vla.sim.evaluate import EvalSettings, evaluate, libero_suite

    kwargs = configs.env_kwargs(cfg.env)
    tasks, suite = configs.env_tasks(cfg.env, "all"), libero_suite(kwargs) if configs.is_libero(cfg.env) else None

    def run(checkpoint: Path, out: Path) -> float:
        settings = EvalSettings(tasks=tasks, episodes=cfg.eval_episodes, num_envs=2, seed=0, videos_per_task=0,
                                env_kwargs=kwargs, suite=suite)
        report = evaluate(policy_factory(str(checkpoint), cfg.env.robot, cfg.env.control_hz, env=cfg.env.name),
                          settings, out, policy_name=str(checkpoint))
        return report["average_success"]
    return run


@hydra.main(config_path=str(CONF_DIR / "train"), config_name="train", version_base="1.3")
def main(cfg: configs.TrainConfig) -> None:
    with user_errors():
        from vla.train.trainer import Trainer

        settings = TrainSettings(**{f.name: cfg[f.name] for f in dataclasses.fields(TrainSettings)})
        if cfg.policy is None:
            raise ValueError("policy: choose a policy config, e.g. policy=tiny (conf/train/policy/)")
        unknown = {name: cam for name, cam in cfg.env.dataset_cameras.items() if cam not in cfg.env.cameras}
        if unknown:
            raise ValueError(f"env.dataset_cameras: {unknown} map to cameras {cfg.env.name} does not have "
                             f"(env.cameras: {list(cfg.env.cameras)})")
        roots = OmegaConf.to_container(cfg.dataset, resolve=True)["root"]  # a directory or a list of them
        trainer = Trainer(OmegaConf.to_container(cfg.policy, resolve=True), roots, cfg.out, settings,
                          cache_dir=cfg.dataset.cache_dir or None,
                          evaluate_fn=sim_evaluator(cfg) if settings.eval_every else None,
                          dataset_cameras=dict(cfg.env.dataset_cameras))
        last = trainer.run()
        if trainer.accelerator.is_main_process:
            print(f"trained {settings.steps} steps; policy checkpoint: {last / 'pretrained'}")


if __name__ == "__main__":
    main()
