"""Environment: the LIBERO suites (hf-libero on robosuite 1.4) as gymnasium envs with vla's vocabulary.

Observations (the layout of the public LIBERO datasets in LeRobot format):

    observation.images.agentview  uint8 (S, S, 3)  the scene camera
    observation.images.wrist      uint8 (S, S, 3)  robot0_eye_in_hand
    observation.state             float32 (8,)     end-effector position (3, m, robot base frame of robosuite's
                                                   world), orientation as axis-angle (3, rad), gripper finger
                                                   positions (2, m)
    task                          str              the task's language instruction

robosuite reads OpenGL's framebuffer bottom row first, so raw frames are upside down; they are rotated by 180°
(`[::-1, ::-1]`), as openpi's conversion of the LIBERO datasets (and so every LeRobot LIBERO dataset) stores them.

Actions: LIBERO's 7-D delta end-effector command for robosuite's OSC_POSE controller at 20 Hz, each in [-1, 1]:
position delta (3, scaled by 0.05 m), rotation delta (3, axis-angle, scaled by 0.5 rad), gripper (-1 open,
+1 close).

Reset: LIBERO's hard reset (the model is rebuilt), then one of the suite's stored initial states
(`options["init_state"]`, a flattened MuJoCo state, or `options["init_index"]`) or, with
`options["sample_init"]`, the placement LIBERO's reset samples from the task's regions (seeded by `seed`: fresh
scenes for demonstrations, away from the evaluation's stored states), then `num_wait_steps` no-op steps while
objects settle (the standard protocol's 10). `max_steps` counts policy steps after the wait.
Rendering: no shadows, reflections or multisampling, and an offscreen buffer of the image size (robosuite
allocates 640x480 with 4x MSAA and reads it back every step: 3x slower). `info["privileged"]` (for scripted
experts only) is laid out as `PRIVILEGED`: the end effector, and the object and target of a pick-and-place goal.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from functools import cache

import gymnasium as gym
import mujoco
import numpy as np

from vla.protocol import checked_action
from vla.sim.libero_setup import import_libero

SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")
# Policy steps per episode after the wait (openpi's and OpenVLA-OFT's LIBERO evaluation).
MAX_STEPS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400}
NUM_WAIT_STEPS = 10
CONTROL_HZ = 20
STATE_DIM = 8
ACTION_DIM = 7
# Feature names for datasets recorded in this env (lerobot's `names`), in the layouts described above.
STATE_NAMES = ("eef_x", "eef_y", "eef_z", "eef_axis_angle_x", "eef_axis_angle_y", "eef_axis_angle_z",
               "gripper_finger_left", "gripper_finger_right")
ACTION_NAMES = ("delta_x", "delta_y", "delta_z", "delta_axis_angle_x", "delta_axis_angle_y", "delta_axis_angle_z",
                "gripper")
CAMERAS = {"agentview": "agentview", "wrist": "robot0_eye_in_hand"}  # vla name -> robosuite camera
RENDERING = "no shadows, reflections or multisampling; offscreen buffer of the image size"
NOOP_ACTION = np.array([0, 0, 0, 0, 0, 0, -1], dtype=np.float32)  # hold still, gripper open
# info["privileged"]: name -> slice; world frame, the end effector's quaternion in robosuite's (x, y, z, w)
# order. Object and target are those of the goal's first `On`/`In` predicate (the target is a body, or a
# region site for `In`, whose box is its parent body's); `*_low`/`*_high` are the corners of the axis-aligned
# box around the body's geoms. NaN for other goals.
PRIVILEGED = {"eef_pos": slice(0, 3), "eef_quat": slice(3, 7), "gripper_qpos": slice(7, 9),
              "object_pos": slice(9, 12), "target_pos": slice(12, 15), "object_low": slice(15, 18),
              "object_high": slice(18, 21), "target_low": slice(21, 24), "target_high": slice(24, 27)}
PRIVILEGED_DIM = 27


@dataclass(frozen=True)
class LiberoTask:
    suite: str
    index: int  # position in the suite's task order
    name: str
    language: str
    max_steps: int
    bddl_file: str


def check_suite(suite: str) -> None:
    if suite not in SUITES:
        close = difflib.get_close_matches(suite, SUITES, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise KeyError(f"unknown LIBERO suite '{suite}'.{hint} Known suites: {', '.join(SUITES)}")


@cache
def _benchmark(suite: str):
    check_suite(suite)
    import_libero()
    from libero.libero import benchmark

    return benchmark.get_benchmark_dict()[suite]()


@cache
def suite_tasks(suite: str) -> dict[str, LiberoTask]:
    """The suite's tasks in LIBERO's standard order (task order 0)."""
    bench = _benchmark(suite)
    return {t.name: LiberoTask(suite, i, t.name, t.language, MAX_STEPS[suite], bench.get_task_bddl_file_path(i))
            for i, t in enumerate(bench.tasks)}


def get_libero_task(suite: str, name: str) -> LiberoTask:
    tasks = suite_tasks(suite)
    if name in tasks:
        return tasks[name]
    close = difflib.get_close_matches(name, tasks, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise KeyError(f"unknown {suite} task '{name}'.{hint} Known tasks: {', '.join(tasks)}")


def resolve_libero_tasks(suite: str, spec: str | list[str] | tuple[str, ...]) -> list[LiberoTask]:
    """`all`, one task name, a comma-separated string or a list of task names of `suite`."""
    if spec == "all":
        return list(suite_tasks(suite).values())
    names = [s.strip() for s in spec.split(",") if s.strip()] if isinstance(spec, str) else list(spec)
    if not names:
        raise KeyError(f"tasks: expected 'all' or {suite} task names, got nothing")
    return [get_libero_task(suite, name) for name in names]


@cache
def load_libero_init_states(suite: str, name: str) -> np.ndarray:
    """The suite's stored initial states of one task, (50, state_size) flattened MuJoCo states."""
    task = get_libero_task(suite, name)
    return np.asarray(_benchmark(suite).get_task_init_states(task.index))


def quat_to_axis_angle(quat_xyzw: np.ndarray) -> np.ndarray:
    """(x, y, z, w) unit quaternion -> (3,) axis * angle, the datasets' orientation (robosuite's quat2axisangle)."""
    w = np.clip(quat_xyzw[3], -1.0, 1.0)
    sin_half = np.sqrt(1.0 - w * w)
    if np.isclose(sin_half, 0.0):
        return np.zeros(3)
    return quat_xyzw[:3] * 2.0 * np.arccos(w) / sin_half


class LiberoEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": CONTROL_HZ}

    def __init__(
        self,
        suite: str = "libero_spatial",
        task: str | None = None,
        image_size: int = 128,
        cameras: tuple[str, ...] = ("agentview", "wrist"),
        num_wait_steps: int = NUM_WAIT_STEPS,
        max_steps: int | None = None,
        render_images: bool = True,
        render_mode: str | None = "rgb_array",
    ):
        check_suite(suite)
        for camera in cameras:
            if camera not in CAMERAS:
                raise ValueError(f"env.cameras: LIBERO has no camera '{camera}' (known: {', '.join(CAMERAS)})")
        if image_size < 16:
            raise ValueError(f"env.image_size must be at least 16 pixels, got {image_size}")
        if num_wait_steps < 0:
            raise ValueError(f"env.num_wait_steps must be >= 0, got {num_wait_steps}")
        if max_steps is not None and max_steps < 1:
            raise ValueError(f"env.max_steps must be at least 1, got {max_steps}")
        self.suite = suite
        self.task = get_libero_task(suite, task) if task else next(iter(suite_tasks(suite).values()))
        self.image_size, self.cameras = image_size, tuple(cameras)
        self.num_wait_steps, self.max_steps_override = num_wait_steps, max_steps
        self.render_images, self.render_mode = render_images, render_mode
        self._env = None  # LIBERO's OffScreenRenderEnv, built on the first reset (inside a worker process)
        self._env_task: str | None = None
        self.queued_reset_options: dict | None = None  # set per slot by a vector env through `set_attr`

        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(ACTION_DIM,), dtype=np.float32)
        spaces = {f"observation.images.{c}": gym.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)
                  for c in self.cameras}
        spaces["observation.state"] = gym.spaces.Box(-np.inf, np.inf, (STATE_DIM,), np.float32)
        spaces["task"] = gym.spaces.Text(max_length=256, charset=frozenset(gym.spaces.text.alphanumeric) | set(" ,.'-"))
        self.observation_space = gym.spaces.Dict(spaces)

    @property
    def max_steps(self) -> int:
        return self.max_steps_override or self.task.max_steps

    # ------------------------------------------------------------------ LIBERO
    def _build(self) -> None:
        """(Re)create LIBERO's env for the current task; a task switch needs a new model."""
        if self._env is not None and self._env_task == self.task.name:
            return
        self.close()
        import_libero()
        from libero.libero.envs import OffScreenRenderEnv

        self._env = OffScreenRenderEnv(
            bddl_file_name=self.task.bddl_file,
            camera_names=[CAMERAS[c] for c in self.cameras] if self.render_images else [],
            camera_heights=self.image_size, camera_widths=self.image_size,
            use_camera_obs=self.render_images, has_offscreen_renderer=self.render_images,
            control_freq=CONTROL_HZ, ignore_done=True,  # this wrapper counts steps
            render_gpu_device_id=int(os.environ.get("MUJOCO_EGL_DEVICE_ID", "-1")),
        )
        self._env_task = self.task.name
        goal = self._env.env.parsed_problem["goal_state"]
        self._pick_place = (goal[0][1], goal[0][2]) if goal and goal[0][0] in ("on", "in") else None

    def _fast_rendering(self) -> None:
        """Drop shadows, reflections and multisampling, and size the offscreen buffer to the images."""
        sim = self._env.sim
        model = sim.model._model
        model.light_castshadow[:] = 0
        model.vis.quality.offsamples = 0
        model.vis.global_.offwidth = model.vis.global_.offheight = self.image_size
        context = sim._render_context_offscreen
        if context is not None:
            context.con.free()
            context._set_mujoco_context_and_buffers()  # robosuite's own (re)allocation, at the new size
            context.scn.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            context.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Options: `task` (a task of this suite), `init_state` (a flattened MuJoCo state), `init_index`
        (into the suite's stored states, default 0) or `sample_init` (keep the placement the reset samples)."""
        super().reset(seed=seed)
        if not options and self.queued_reset_options is not None:
            options, self.queued_reset_options = self.queued_reset_options, None
        options = options or {}
        if "task" in options:
            self.task = get_libero_task(self.suite, options["task"])
        self._build()
        if seed is not None:
            self._env.seed(seed)
        self._env.reset()  # a hard reset: the model and its render context are rebuilt
        if self.render_images:
            self._fast_rendering()
        state = self.sim_state() if options.get("sample_init") else options.get("init_state")
        if state is None:
            state = load_libero_init_states(self.suite, self.task.name)[options.get("init_index", 0)]
        raw = self._env.set_init_state(np.asarray(state, dtype=np.float64))
        if self._pick_place is not None:  # geom ids of the rebuilt model
            self._pick_place_geoms = tuple(self._geoms_of(name) for name in self._pick_place)
        for _ in range(self.num_wait_steps):
            raw, _, _, _ = self._env.step(NOOP_ACTION)
        self.steps, self.success = 0, False
        return self._observation(raw), self._info(raw)

    def step(self, action):
        action = checked_action(action, ACTION_DIM)
        clipped = np.clip(action, -1.0, 1.0)
        raw, _, _, _ = self._env.step(clipped)
        self.steps += 1
        self.success = bool(self._env.check_success())
        truncated = self.steps >= self.max_steps and not self.success
        info = self._info(raw)
        info["action_clipped"] = bool(np.any(clipped != action))
        return self._observation(raw), float(self.success), self.success, truncated, info

    def _observation(self, raw: dict) -> dict:
        obs = {f"observation.images.{c}": np.ascontiguousarray(raw[f"{CAMERAS[c]}_image"][::-1, ::-1])
               if self.render_images else np.zeros((self.image_size, self.image_size, 3), np.uint8)
               for c in self.cameras}
        obs["observation.state"] = np.concatenate(
            [raw["robot0_eef_pos"], quat_to_axis_angle(raw["robot0_eef_quat"]), raw["robot0_gripper_qpos"]]
        ).astype(np.float32)
        obs["task"] = self.task.language
        return obs

    def _privileged(self, raw: dict) -> np.ndarray:
        out = np.full(PRIVILEGED_DIM, np.nan)
        out[PRIVILEGED["eef_pos"]], out[PRIVILEGED["eef_quat"]] = raw["robot0_eef_pos"], raw["robot0_eef_quat"]
        out[PRIVILEGED["gripper_qpos"]] = raw["robot0_gripper_qpos"]
        if self._pick_place is not None:
            states = self._env.env.object_states_dict
            obj, target = (states[name].get_geom_state()["pos"] for name in self._pick_place)
            out[PRIVILEGED["object_pos"]], out[PRIVILEGED["target_pos"]] = obj, target
            for role, geoms in zip(("object", "target"), self._pick_place_geoms, strict=True):
                out[PRIVILEGED[f"{role}_low"]], out[PRIVILEGED[f"{role}_high"]] = self._bounding_box(geoms)
        return out

    def _geoms_of(self, name: str) -> np.ndarray:
        """Ids of the geoms of an object's body and its descendants (a region site: its parent object's)."""
        env = self._env.env
        if name in env.object_sites_dict:
            name = env.object_sites_dict[name].parent_name
        model = env.sim.model._model
        root = env.obj_body_id[name]
        in_subtree = np.zeros(model.nbody, dtype=bool)
        for body in range(model.nbody):  # parents come before children in MuJoCo's body order
            in_subtree[body] = body == root or (body > 0 and in_subtree[model.body_parentid[body]])
        return np.flatnonzero(in_subtree[model.geom_bodyid])

    def _bounding_box(self, geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        model, data = self._env.sim.model._model, self._env.sim.data._data
        rot = data.geom_xmat[geoms].reshape(-1, 3, 3)  # (G, 3, 3)
        centre = data.geom_xpos[geoms] + np.einsum("gij,gj->gi", rot, model.geom_aabb[geoms, :3])  # (G, 3)
        half = np.einsum("gij,gj->gi", np.abs(rot), model.geom_aabb[geoms, 3:])  # (G, 3)
        return (centre - half).min(0), (centre + half).max(0)

    def _info(self, raw: dict) -> dict:
        return {"success": self.success, "steps": self.steps, "privileged": self._privileged(raw),
                "task_name": self.task.name}

    def sim_state(self) -> np.ndarray:
        """The flattened MuJoCo state, the format of the suite's initial states."""
        return self._env.get_sim_state()

    def render(self) -> np.ndarray:
        """The last observation's cameras side by side, for videos."""
        raw = self._env.env._get_observations()
        obs = self._observation(raw)
        return np.concatenate([obs[f"observation.images.{c}"] for c in self.cameras], axis=1)

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env, self._env_task = None, None
