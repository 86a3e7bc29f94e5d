"""Teleop recording from robot topics (ROS 2 or DDS) into a LeRobotDataset v3.

The transport feeds the newest joint state, camera frames, instruction and
commanded action in through `on_*`; `tick` samples them at the dataset's fps
while recording. A control stream (a topic or the keyboard) says `start`,
`stop` (save the episode as a success), `fail` (save it as a failure) or
`discard`. Every saved episode is on disk at once (see `EpisodeWriter`), so a
crash loses only the episode in progress.

Real-robot episodes have no simulator seed; each gets a unique id as its seed
(microseconds since the epoch at its start).
"""

from __future__ import annotations

import time

import numpy as np

from vla.data.episode_writer import EpisodeWriter

CONTROLS = ("start", "stop", "fail", "discard")


class TopicRecorder:
    def __init__(self, writer: EpisodeWriter, cameras: tuple[str, ...]):
        self.writer = writer
        self.cameras = cameras
        self.recording = False
        self._state: np.ndarray | None = None
        self._action: np.ndarray | None = None
        self._images: dict[str, np.ndarray] = {}
        self._instruction: str | None = None
        self._episode_id = 0
        self.frames = 0

    def on_joint_state(self, positions: np.ndarray) -> None:
        self._state = np.asarray(positions, dtype=np.float32)

    def on_command(self, action: np.ndarray) -> None:
        self._action = np.asarray(action, dtype=np.float32)

    def on_image(self, camera: str, image: np.ndarray) -> None:
        self._images[camera] = image

    def on_instruction(self, text: str) -> None:
        self._instruction = text

    def on_control(self, control: str) -> str:
        """Apply a control word; returns what happened, for the operator's log."""
        control = control.strip().lower()
        if control not in CONTROLS:
            return f"ignored unknown control '{control}' (expected one of {', '.join(CONTROLS)})"
        if control == "start":
            if self.recording:
                return "already recording"
            self.recording, self.frames = True, 0
            self._episode_id = time.time_ns() // 1000
            return f"recording episode {self.writer.num_episodes}"
        if not self.recording:
            return f"'{control}' ignored: not recording"
        self.recording = False
        if control == "discard" or self.frames == 0:
            self.writer.discard_episode()
            return "discarded the episode"
        index = self.writer.save_episode(seed=self._episode_id, success=control == "stop")
        return f"saved episode {index} ({self.frames} frames, success={control == 'stop'})"

    @property
    def missing(self) -> list[str]:
        """Streams not heard from yet."""
        streams = {"joint state": self._state, "command": self._action, "instruction": self._instruction}
        missing = [name for name, value in streams.items() if value is None]
        return missing + [f"camera {c}" for c in self.cameras if c not in self._images]

    def tick(self) -> bool:
        """Add one frame of the newest data when recording and every stream has arrived."""
        if not self.recording or self.missing:
            return False
        frame = {f"observation.images.{c}": self._images[c] for c in self.cameras}
        frame.update({"observation.state": self._state, "action": self._action, "task": self._instruction})
        self.writer.add_frame(frame)
        self.frames += 1
        return True
