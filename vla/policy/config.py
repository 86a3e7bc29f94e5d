"""The policy's configuration: backbone, action head, sampler and execution, validated on creation.

`config.json` in a checkpoint is `VLAPolicyConfig.to_dict()`; `from_dict` rebuilds it and names any unknown or
mistyped key, so a hand-edited or stale checkpoint fails at load, not deep inside torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from vla.policy.action_head import ActionHeadConfig
from vla.policy.backbone import TinyVLMConfig
from vla.policy.env_state_probe import PROBE_SOURCES

SAMPLERS = ("euler", "ddim")


@dataclass
class HFBackboneConfig:
    model_dir: str = ""  # a local transformers VLM directory (SmolVLM / Idefics3 class), never downloaded
    num_layers: int = 8  # keep the first L decoder layers; the tokens are layer L's hidden states
    cameras: tuple[str, ...] = ("front", "wrist")
    image_size: int = 128
    max_text_tokens: int = 32  # the instruction is padded / truncated to this many tokens
    freeze: bool = True  # the VLM's weights stay fixed (and are not stored in checkpoints); only the action head trains
    type: str = field(default="hf", init=False)

    def __post_init__(self) -> None:
        self.cameras = tuple(self.cameras)
        if not self.model_dir:
            raise ValueError("backbone.model_dir must name a local Hugging Face VLM directory")
        for name in ("num_layers", "image_size", "max_text_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"backbone.{name} must be >= 1, got {getattr(self, name)}")
        if not self.cameras:
            raise ValueError("backbone.cameras must name at least one camera")


@dataclass
class SamplerConfig:
    kind: str = "euler"  # euler (flow matching's own ODE solver) | ddim (diffusers' DDIMScheduler, for comparison)
    steps: int = 10
    fixed_noise: bool = False  # True: every call starts from the same noise (seed below): reproducible inference
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in SAMPLERS:
            raise ValueError(f"sampler.kind must be one of {SAMPLERS}, got {self.kind!r}")
        if self.steps < 1:
            raise ValueError(f"sampler.steps must be >= 1, got {self.steps}")


@dataclass
class ExecutionConfig:
    """How many actions of a chunk run before the policy is asked again."""

    adaptive: bool = True  # from the horizons' disagreement (needs >= 2 horizons); False: always `fixed`
    min_execute: int = 4
    max_execute: int = 12  # at most the second-largest horizon: beyond it only one branch predicts
    ratio: float = 2.0  # extend while a step's disagreement < ratio * the mean over the first min_execute steps
    fixed: int = 8

    def __post_init__(self) -> None:
        if not 1 <= self.min_execute <= self.max_execute:
            raise ValueError(f"execution: need 1 <= min_execute ({self.min_execute}) <= max_execute "
                             f"({self.max_execute})")
        if self.ratio <= 0:
            raise ValueError(f"execution.ratio must be > 0, got {self.ratio}")
        if self.fixed < 1:
            raise ValueError(f"execution.fixed must be >= 1, got {self.fixed}")


@dataclass
class VLAPolicyConfig:
    backbone: TinyVLMConfig | HFBackboneConfig = field(default_factory=TinyVLMConfig)
    head: ActionHeadConfig = field(default_factory=ActionHeadConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    relative_actions: bool = True  # the arm's joints are predicted as offsets from the current state; the last
    # action dim (the gripper command) stays absolute
    state_dropout: float = 0.0  # training only: the probability, per sample, that the head's state input is the
    # dataset mean instead, so it cannot predict a chunk from the arm's position alone (on expert paths the pose
    # already points where the arm is going) and must read the images
    env_state_weight: float = 0.0  # > 0: in training, an EnvStateProbe regresses the dataset's privileged
    # observation.environment_state (object positions) from the backbone tokens, loss weighted by this
    env_state_dim: int = 0  # the probe's output size; vla-train sets it from the dataset (0: no probe)
    env_state_group: int = 3  # dims per probe query: 3 = one query per object's x, y, z
    env_state_probe: str = "tokens"  # what the probe reads: tokens (the backbone's) | keypoints (its own conv
    # keypoints over the pixels; see vla/policy/env_state_probe.py)
    object_token: bool = False  # the probe's estimate of the environment state also conditions the action head
    # (one more token; the probe is then stored in checkpoints and runs at inference); needs env_state_dim > 0
    object_token_noise: float = 0.1  # training: the head's object token is the recorded state (normalized) plus
    # Gaussian noise of this std, so it learns from clean targets at the estimate's error scale

    def __post_init__(self) -> None:
        if not 0.0 <= self.state_dropout <= 1.0:
            raise ValueError(f"state_dropout must be in [0, 1], got {self.state_dropout}")
        if self.env_state_weight < 0 or self.env_state_dim < 0:
            raise ValueError(f"env_state_weight ({self.env_state_weight}) and env_state_dim ({self.env_state_dim}) "
                             "must be >= 0")
        if self.env_state_probe not in PROBE_SOURCES:
            raise ValueError(f"env_state_probe must be one of {PROBE_SOURCES}, got {self.env_state_probe!r}")
        if self.env_state_group < 1 or self.object_token_noise < 0:
            raise ValueError(f"env_state_group ({self.env_state_group}) must be >= 1 and object_token_noise "
                             f"({self.object_token_noise}) >= 0")
        H = self.head.chunk
        if self.execution.adaptive and len(self.head.branch_horizons) < 2:
            raise ValueError("execution.adaptive needs at least two horizons (head.fusion 'gate' or 'mean'); "
                             "set execution.adaptive=false for a single horizon")
        limit = self.execution.max_execute if self.execution.adaptive else self.execution.fixed
        if limit > H:
            raise ValueError(f"execution: {'max_execute' if self.execution.adaptive else 'fixed'}={limit} exceeds "
                             f"the chunk (head.chunk={H})")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> VLAPolicyConfig:
        data = dict(data)
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"{source}: unknown key(s) {sorted(unknown)}")
        backbone = dict(data.pop("backbone", {}))
        kind = backbone.pop("type", "tiny")
        backbone_cls = {"tiny": TinyVLMConfig, "hf": HFBackboneConfig}.get(kind)
        if backbone_cls is None:
            raise ValueError(f"{source}: backbone.type must be 'tiny' or 'hf', got {kind!r}")
        sections = {"backbone": (backbone_cls, backbone)}
        for name, section_cls in (("head", ActionHeadConfig), ("sampler", SamplerConfig),
                                  ("execution", ExecutionConfig)):
            sections[name] = (section_cls, data.pop(name, {}))
        built = {name: _build(section_cls, values, f"{source}: {name}") for name, (section_cls, values) in
                 sections.items()}
        return cls(**built, **data)


def _build(section_cls: type, values: dict[str, Any], where: str) -> Any:
    names = {f.name for f in dataclasses.fields(section_cls) if f.init}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; expected some of {sorted(names)}")
    try:
        return section_cls(**values)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {err}") from err
