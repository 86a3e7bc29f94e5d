"""Config schemas for the command-line apps, registered with hydra's ConfigStore.

The YAML files in `conf/` fill these in; an unknown key or a value of the
wrong type fails at start-up with hydra's message naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

from vla.train.settings import TrainSettings


@dataclass
class EnvConfig:
    name: str = "tabletop"  # tabletop | a LIBERO suite (libero_spatial, libero_object, libero_goal, ...)
    robot: str = "panda"
    image_size: int = 128
    cameras: list[str] = field(default_factory=lambda: ["front", "wrist"])
    control_hz: int = 10
    num_wait_steps: int = 10  # LIBERO: no-op steps after reset while objects settle
    max_steps: int = 0  # LIBERO: policy steps per episode; 0 = the suite's standard limit
    # The env's layout, which vla-train gives the policy (conf/train/train.yaml); checked against the env.
    state_dim: int = 8
    action_dim: int = 8
    relative_actions: bool = True  # vla-train: arm actions are learned as offsets from the state (absolute targets)
    dataset_cameras: dict[str, str] = field(default_factory=dict)  # vla-train: a dataset's camera -> an env camera


@dataclass
class PerturbationConfig:
    kind: str = "none"  # none | move | drop
    step: int = 30


@dataclass
class EvalConfig:
    env: EnvConfig = field(default_factory=EnvConfig)
    policy: str = "expert"  # expert | a checkpoint directory
    tasks: Any = "all"  # all | a family | a task name | a list or comma-separated names
    episodes: int = 50  # per task, from the stored initial states
    num_envs: int = 2  # parallel environment processes
    policy_threads: int = 1  # torch intra-op threads of a checkpoint policy (in the main process)
    instruction: str = "canonical"  # canonical | train | held_out
    videos_per_task: int = 1
    seed: int = 0
    perturbation: PerturbationConfig = field(default_factory=PerturbationConfig)
    out: str = "outputs/eval"


@dataclass
class RecordConfig:
    env: EnvConfig = field(default_factory=EnvConfig)
    source: str = "expert"  # expert | keyboard | dds | ros2
    task: Any = "all"  # all | a family | a task name | a list or comma-separated names
    episodes: int = 50  # successful episodes per task
    root: str = "data/tabletop"
    resume: bool = False
    keep_failed: bool = False
    instruction: str = "train"  # canonical | train | held_out
    seed: int = 0
    max_attempts_factor: int = 3  # give up on a task after episodes * this many attempts
    domain_id: int = 0  # source=dds|ros2: DDS domain (ROS_DOMAIN_ID)
    duration: float = 0.0  # source=dds|ros2: seconds to record; 0 records until Ctrl-C
    ros_params: str = ""  # source=ros2: a ROS 2 parameters YAML (launch/params/<arm>.yaml)
    bag: str = ""  # source=dds: also write the session as a rosbag2 (MCAP) bag at this path


@dataclass
class BridgeConfig:
    transport: str = "dds"  # dds (Cyclone DDS, no ROS install) | ros2 (rclpy)
    robot: Any = None  # the conf/robot/<arm>.yaml group (`robot=panda`); code reads it by `robot.name`
    policy: str = "expert"  # expert | a checkpoint directory
    command_hz: float = 100.0
    policy_hz: float = 10.0
    blend: str = "crossfade"  # crossfade | temporal_ensemble | inpaint
    domain_id: int = 0  # ROS_DOMAIN_ID
    joint_state_timeout: float = 0.05  # s without joint states before the watchdog holds
    camera_timeout: float = 0.2  # s without a camera frame before the watchdog holds
    duration: float = 0.0  # s; 0 runs until stopped
    sim: bool = False  # also start the MuJoCo robot process and write out/report.json
    task: str = "put_red_cube_in_bin"  # sim only
    init_index: int = 0  # sim only: which stored initial state
    out: str = "outputs/bridge"
    ros_params: str = ""  # transport=ros2: a ROS 2 parameters YAML (launch/params/<arm>.yaml)


@dataclass
class DatasetConfig:
    root: Any = "data/tabletop"  # a dataset directory, or a list of them trained on as one
    cache_dir: str = ""  # decoded-frame cache; empty: <root>/.cache/vla


@dataclass
class TrainConfig(TrainSettings):
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    policy: Any = None  # the conf/train/policy/<name>.yaml group, checked by vla.policy.config.VLAPolicyConfig
    env: EnvConfig = field(default_factory=EnvConfig)  # for the periodic evaluation
    out: str = "outputs/train"


@dataclass
class QuantSchemeConfig:
    backend: str = "torchao"  # torchao | bitsandbytes
    scheme: str = "w8a8"  # torchao: w8a8 | w8; bitsandbytes: int8 | nf4


@dataclass
class QuantLayoutConfig:
    quantize: list[str] = field(default_factory=list)  # module-name globs of the linear layers to quantize
    keep: list[str] = field(default_factory=list)  # module-name globs kept in floating point


@dataclass
class QuantCalibrationConfig:
    observations: int = 32  # unlabeled observations from scripted-expert rollouts (>= 32)
    atm: bool = True  # attention temperature matching
    ohb: bool = True  # output head balancing
    alpha_min: float = 0.7
    alpha_max: float = 1.4
    max_log_beta: float = 0.3


@dataclass
class QuantReportConfig:
    observations: int = 16  # held-out observations for action MSE and per-layer cosine
    ablation: bool = True  # action MSE with ATM/OHB each on and off
    latency_runs: int = 30
    latency_warmup: int = 3
    threads: int = 2  # CPU threads for the latency measurement
    rss: bool = True  # peak RSS of a fresh process per checkpoint


@dataclass
class QuantEvalConfig:
    episodes: int = 20  # per task, float and quantized; 0 skips the success evaluation
    tasks: Any = "all"
    num_envs: int = 2


@dataclass
class QuantizeConfig:
    checkpoint: str = "checkpoints/tabletop"
    quant: QuantSchemeConfig = field(default_factory=QuantSchemeConfig)  # the conf/quant/<name>.yaml group
    layout: QuantLayoutConfig = field(default_factory=QuantLayoutConfig)
    calibration: QuantCalibrationConfig = field(default_factory=QuantCalibrationConfig)
    report: QuantReportConfig = field(default_factory=QuantReportConfig)
    eval: QuantEvalConfig = field(default_factory=QuantEvalConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    seed: int = 0
    out: str = "outputs/quantize"


def is_libero(env: EnvConfig) -> bool:
    return env.name.startswith("libero")


def env_tasks(env: EnvConfig, spec: Any) -> list:
    """The env's tasks that `spec` names: tabletop `Task`s, or `LiberoTask`s of the env's suite."""
    if is_libero(env):
        from vla.sim.libero_env import resolve_libero_tasks

        return resolve_libero_tasks(env.name, spec)
    from vla.sim.tasks import resolve_tasks

    return resolve_tasks(spec)


def check_layout(env: EnvConfig, state_dim: int, action_dim: int) -> None:
    if (env.state_dim, env.action_dim) != (state_dim, action_dim):
        raise ValueError(f"env.state_dim, env.action_dim: {env.name} has {state_dim}-D states and {action_dim}-D "
                         f"actions; got {env.state_dim} and {env.action_dim}")


def env_kwargs(env: EnvConfig, **extra) -> dict:
    """Keyword arguments for `TabletopEnv` or `LiberoEnv` from the env config."""
    if is_libero(env):
        from vla.sim.libero_env import ACTION_DIM, CONTROL_HZ, STATE_DIM, check_suite

        check_suite(env.name)
        if env.control_hz != CONTROL_HZ or env.robot != "panda":
            raise ValueError(f"env: LIBERO runs a Panda at {CONTROL_HZ} Hz; got env.robot={env.robot}, "
                             f"env.control_hz={env.control_hz}")
        check_layout(env, STATE_DIM, ACTION_DIM)
        return {"suite": env.name, "image_size": env.image_size, "cameras": tuple(env.cameras),
                "num_wait_steps": env.num_wait_steps, "max_steps": env.max_steps or None, **extra}
    if env.name != "tabletop":
        raise ValueError(f"env.name: expected 'tabletop' or a LIBERO suite (libero_spatial, ...), got '{env.name}'")
    if env.max_steps or env.num_wait_steps != EnvConfig.num_wait_steps:
        raise ValueError("env.max_steps and env.num_wait_steps are LIBERO settings; the tabletop tasks have their "
                         "own step limits (vla/sim/tasks.py)")
    from vla.sim.tabletop_env import ACTION_DIM, STATE_DIM

    check_layout(env, STATE_DIM, ACTION_DIM)
    return {"robot": env.robot, "image_size": env.image_size, "cameras": tuple(env.cameras),
            "control_hz": env.control_hz, **extra}


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="eval_schema", node=EvalConfig)
    cs.store(name="record_schema", node=RecordConfig)
    cs.store(name="bridge_schema", node=BridgeConfig)
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="quantize_schema", node=QuantizeConfig)
