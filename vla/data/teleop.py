"""Keyboard teleoperation in the MuJoCo viewer (needs a display).

Keys move the gripper's pinch point; inverse kinematics turns it into the same
absolute joint targets a policy outputs, so teleop episodes look exactly like
expert ones in the dataset.

    W/S  +x/-x      A/D  +y/-y      R/F  up/down      Q/E  rotate the jaws
    SPACE  open/close the gripper   ENTER  save the episode and start the next
    BACKSPACE  discard and redo     X  stop the session
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from vla.sim.kinematics import PinchIK, site_yaw, top_down_rotation
from vla.sim.tabletop_env import ACTION_DIM, STATE_DIM, TabletopEnv
from vla.sim.tasks import Task

# GLFW key codes, as MuJoCo's viewer reports them.
_MOVES = {87: (0, +1), 83: (0, -1), 65: (1, +1), 68: (1, -1), 82: (2, +1), 70: (2, -1)}
_ROTATE = {81: +1, 69: -1}
_SPACE, _ENTER, _BACKSPACE, _X = 32, 257, 259, 88
_EVENTS = {_ENTER: "save", _BACKSPACE: "discard", _X: "quit"}


class KeyboardTeleop:
    """Key presses -> a Cartesian pinch target and gripper command -> an action."""

    def __init__(self, ik: PinchIK, step: float = 0.01, yaw_step: float = 0.1):
        self.ik = ik
        self.step = step
        self.yaw_step = yaw_step
        self.target: np.ndarray | None = None
        self.yaw = 0.0
        self.gripper = 1.0
        self.pending_event: str | None = None

    def start(self, qpos: np.ndarray) -> None:
        """Begin an episode from the robot's current pose with the gripper open."""
        self.ik.set_qpos(qpos)
        pos, mat = self.ik.site_pose()
        self.target, self.yaw, self.gripper, self.pending_event = pos, site_yaw(mat), 1.0, None

    def on_key(self, keycode: int) -> None:
        if keycode in _MOVES:
            axis, sign = _MOVES[keycode]
            self.target[axis] += sign * self.step
        elif keycode in _ROTATE:
            self.yaw += _ROTATE[keycode] * self.yaw_step
        elif keycode == _SPACE:
            self.gripper = 0.0 if self.gripper > 0.5 else 1.0
        elif keycode in _EVENTS:
            self.pending_event = _EVENTS[keycode]

    def take_event(self) -> str | None:
        event, self.pending_event = self.pending_event, None
        return event

    def action(self, qpos: np.ndarray) -> np.ndarray:
        self.ik.set_qpos(qpos)
        q = self.ik.solve(self.target, top_down_rotation(self.yaw))
        return np.append(q, self.gripper).astype(np.float32)


def record_keyboard(tasks: list[Task], root: Path, env_kwargs: dict, *, session_seed: int = 0,
                    resume: bool = False) -> None:
    """Teleop one episode after another, cycling through `tasks`, until X is pressed."""
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        raise ValueError("source=keyboard needs a display (DISPLAY is not set); use source=expert headless")
    import mujoco.viewer

    from vla.data.episode_writer import EpisodeWriter
    from vla.data.record import episode_seed

    env = TabletopEnv(task=tasks[0].name, **env_kwargs)
    teleop = KeyboardTeleop(PinchIK(env.model, env.limits))
    fps = round(1.0 / env.control_dt)
    with (
        EpisodeWriter(root=root, fps=fps, camera_names=list(env.cameras), image_size=env.image_size,
                      state_dim=STATE_DIM, action_dim=ACTION_DIM, robot_type=env.limits.name, resume=resume) as writer,
        mujoco.viewer.launch_passive(env.model, env.data, key_callback=teleop.on_key) as viewer,
    ):
        episode = writer.num_episodes
        while viewer.is_running():
            task = tasks[episode % len(tasks)]
            seed = episode_seed(session_seed, task, episode)
            obs, info = env.reset(seed=seed, options={"task": task.name})
            teleop.start(env.data.qpos)
            print(f"episode {episode}: {obs['task']}  (ENTER save, BACKSPACE redo, X quit)")
            event = None
            while viewer.is_running() and event is None:
                tick = time.perf_counter()
                action = teleop.action(env.data.qpos)
                writer.add_frame({**obs, "action": action})
                obs, _, _, _, info = env.step(action)
                viewer.sync()
                event = teleop.take_event()
                time.sleep(max(0.0, env.control_dt - (time.perf_counter() - tick)))
            if event == "save":
                writer.save_episode(seed=seed, success=bool(info["success"]))
                print(f"saved episode {episode} (success={info['success']})")
                episode += 1
            else:
                writer.discard_episode()
                if event == "quit" or not viewer.is_running():
                    break
    env.close()
