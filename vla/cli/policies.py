"""`policy=...` for every command: `expert` (the scripted expert) or a checkpoint directory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from vla.protocol import ChunkPolicy


def policy_factory(spec: str, robot: str, control_hz: int, expert_chunk: int = 1,
                   env: str = "tabletop") -> Callable[[], ChunkPolicy]:
    """A function that builds one policy instance per environment or robot.

    `expert_chunk`: actions per expert call; a bridged policy must plan beyond its own inference delay.
    `env`: which scripted expert `expert` means (the tabletop's, or LIBERO's for a `libero_*` suite).
    """
    if spec == "expert" and env.startswith("libero"):
        from vla.sim.libero_expert import LiberoExpert, check_expert_suite

        check_expert_suite(env)
        return LiberoExpert
    if spec == "expert":
        from vla.sim.expert import ScriptedExpert

        return lambda: ScriptedExpert(robot, control_hz, chunk_size=expert_chunk)
    path = Path(spec)
    if not path.is_dir():
        raise FileNotFoundError(f"policy: '{spec}' is neither 'expert' nor an existing checkpoint directory")
    from vla.policy.policy import VLAPolicy

    VLAPolicy.from_pretrained(path)  # fail here, naming the file, rather than inside a worker
    return lambda: VLAPolicy.from_pretrained(path)
