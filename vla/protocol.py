"""The protocol every policy implements to be evaluated, recorded from, or bridged to a robot.

    policy.reset(seed)                       # a new episode begins
    policy.predict_chunk(obs) -> actions     # (T, action_dim) float32 absolute targets
                          or (actions, n_execute)

`obs` holds one environment's observation (`observation.images.<camera>`,
`observation.state`, `task`). `n_execute` (default: the whole chunk) is how
many actions of the chunk to run before asking again; a mixture-of-horizons
policy sets it from the disagreement between its horizons.

Scripted experts set `privileged = True`; the caller then also passes
`obs["privileged"]` (the simulator's `qpos`) and `obs["task_name"]`.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class ChunkPolicy(Protocol):
    privileged: bool

    def reset(self, seed: int | None = None) -> None: ...

    def predict_chunk(self, obs: dict[str, Any]) -> np.ndarray | tuple[np.ndarray, int]: ...


def split_chunk(output: np.ndarray | tuple[np.ndarray, int], action_dim: int) -> tuple[np.ndarray, int]:
    """Normalize a `predict_chunk` result to (actions (T, action_dim), n_execute), checking both."""
    actions, n_execute = output if isinstance(output, tuple) else (output, None)
    actions = np.asarray(actions, dtype=np.float32)
    if actions.ndim == 1:
        actions = actions[None]
    if actions.ndim != 2 or actions.shape[1] != action_dim or len(actions) == 0:
        raise ValueError(f"predict_chunk must return actions of shape (T, {action_dim}), got {actions.shape}")
    n_execute = len(actions) if n_execute is None else int(n_execute)
    if not 1 <= n_execute <= len(actions):
        raise ValueError(f"predict_chunk returned n_execute={n_execute}, expected 1..{len(actions)}")
    return actions, n_execute


def checked_action(action: Any, action_dim: int) -> np.ndarray:
    """One env action as float64 (action_dim,), refusing a wrong shape or non-finite values (never silently)."""
    action = np.asarray(action, dtype=np.float64).reshape(-1)
    if action.shape != (action_dim,):
        raise ValueError(f"action must have shape ({action_dim},), got {action.shape}")
    if not np.all(np.isfinite(action)):
        raise ValueError(f"action has non-finite values: {action}")
    return action
