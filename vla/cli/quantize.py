"""vla-quantize: a float checkpoint -> a quantized checkpoint directory and a report of what it cost."""

from __future__ import annotations

from pathlib import Path

import hydra

from vla.cli import configs
from vla.cli.errors import user_errors
from vla.limits import CONF_DIR

configs.register()


@hydra.main(config_path=str(CONF_DIR), config_name="quantize", version_base="1.3")
def main(cfg: configs.QuantizeConfig) -> None:
    with user_errors():
        from vla.quant.calibrate import CalibrationSettings
        from vla.quant.layout import Layout
        from vla.quant.pipeline import QuantizeSettings, quantize_checkpoint
        from vla.sim.tasks import resolve_tasks

        checkpoint = Path(cfg.checkpoint)
        if not checkpoint.is_dir():
            raise FileNotFoundError(f"checkpoint: '{checkpoint}' is not a checkpoint directory")
        c, r = cfg.calibration, cfg.report
        settings = QuantizeSettings(
            checkpoint=checkpoint, out=Path(cfg.out), backend=cfg.quant.backend, scheme=cfg.quant.scheme,
            layout=Layout(quantize=tuple(cfg.layout.quantize), keep=tuple(cfg.layout.keep)),
            calibration=CalibrationSettings(atm=c.atm, ohb=c.ohb, alpha_min=c.alpha_min, alpha_max=c.alpha_max,
                                            max_log_beta=c.max_log_beta, seed=cfg.seed),
            calibration_observations=c.observations, eval_observations=r.observations,
            tasks=resolve_tasks(cfg.eval.tasks), env_kwargs=configs.env_kwargs(cfg.env), ablation=r.ablation,
            latency_runs=r.latency_runs, latency_warmup=r.latency_warmup, latency_threads=r.threads, rss=r.rss,
            eval_episodes=cfg.eval.episodes, eval_num_envs=cfg.eval.num_envs, seed=cfg.seed,
        )
        quantize_checkpoint(settings)
        out = Path(cfg.out)
        print((out / "report.md").read_text())
        print(f"wrote the quantized checkpoint {out}/ and {out / 'report.json'}, {out / 'report.md'}, "
              f"{out / 'report.png'}")


if __name__ == "__main__":
    main()
