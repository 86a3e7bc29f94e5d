"""The bridge over Cyclone DDS, with ROS 2's topics and types and no ROS install.

Each control tick takes the newest message of every input topic into the core,
and publishes the command the safety filter lets through as a
`std_msgs/Float64MultiArray` (ros2_control's forward position controller),
plus diagnostics at a lower rate. Times are this process's monotonic clock at
receipt, so staleness never depends on the robot's clock being in sync.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from vla.robot_bridge import msgs
from vla.robot_bridge.core import BridgeCore
from vla.robot_bridge.dds import DdsBridgeTransport, DdsConfig


@dataclass
class LoopStats:
    ticks: list[float] = field(default_factory=list)  # monotonic time of every tick
    commands_sent: int = 0

    def jitter_ms(self, period: float) -> dict:
        """p50/p99 of |tick period - nominal period| in ms."""
        if len(self.ticks) < 3:
            return {"p50": None, "p99": None}
        error = np.abs(np.diff(self.ticks) - period) * 1e3
        return {"p50": float(np.percentile(error, 50)), "p99": float(np.percentile(error, 99))}


class DdsBridgeNode:
    def __init__(self, core: BridgeCore, transport: DdsBridgeTransport, command_hz: float,
                 diagnostics_hz: float = 10.0):
        self.core = core
        self.transport = transport
        self.period = 1.0 / command_hz
        self.diagnostics_every = max(1, round(command_hz / diagnostics_hz))
        self.stats = LoopStats()
        self.malformed_messages = 0

    def _take_inputs(self, now: float) -> None:
        t = self.transport
        state = t.take_latest_joint_state()
        if state is not None:
            with self._dropping_malformed("joint state"):
                self.core.on_joint_state(msgs.to_numpy(state, self.core.names), now, now)
        for camera in self.core.cameras:
            image = t.take_latest_image(camera)
            if image is not None:
                with self._dropping_malformed(f"{camera} image"):
                    self.core.on_image(camera, msgs.image_to_numpy(image), now)
        instruction = t.take_latest_instruction()
        if instruction is not None:
            self.core.on_instruction(instruction)
        estop = t.take_latest_estop()
        if estop is not None:
            self.core.on_estop(estop, now)
        if self.core.privileged:
            sim_state = t.take_latest_sim_state()
            if sim_state is not None:
                self.core.on_sim_state(msgs.multi_array_to_numpy(sim_state), sim_state.layout.dim[0].label)

    @contextmanager
    def _dropping_malformed(self, what: str):
        """A malformed message is dropped (and counted) as if it never arrived: if nothing valid follows, the
        stream goes stale and the watchdog holds, instead of the control loop dying."""
        try:
            yield
        except ValueError as err:
            self.malformed_messages += 1
            if self.malformed_messages == 1:
                print(f"warning: dropping a malformed {what}: {err}", file=sys.stderr)

    def spin(self, duration_s: float, should_stop: Callable[[], bool] = lambda: False) -> LoopStats:
        """Run the control loop at the command rate for `duration_s` or until `should_stop()`."""
        start = time.monotonic()
        tick = 0
        while time.monotonic() - start < duration_s and not should_stop():
            now = time.monotonic()
            self.stats.ticks.append(now)
            self._take_inputs(now)
            result = self.core.tick(now)
            if result is not None and result.publish:
                self.transport.publish_command(msgs.float64_multi_array(result.command))
                self.stats.commands_sent += 1
            if tick % self.diagnostics_every == 0:
                status = msgs.diagnostic_status("vla_bridge", self.core.diagnostics())
                self.transport.publish_diagnostics(msgs.diagnostic_array([status], stamp_ns=time.time_ns()))
            tick += 1
            time.sleep(max(0.0, start + tick * self.period - time.monotonic()))
        return self.stats


def run_dds_bridge(policy, robot: str, cfg) -> LoopStats:
    """Drive a real arm (or any ROS 2 graph) over DDS with the bridge config `cfg` until `duration` or Ctrl-C.

    Cyclone DDS uses the network configuration in CYCLONEDDS_URI; set it for the robot's interface.
    """
    core = BridgeCore.from_config(policy, robot, cfg.command_hz, cfg.policy_hz, cfg.blend, time.monotonic(),
                                  joint_state_timeout=cfg.joint_state_timeout, camera_timeout=cfg.camera_timeout)
    try:
        with DdsBridgeTransport("bridge", DdsConfig(domain_id=cfg.domain_id)) as transport:
            node = DdsBridgeNode(core, transport, cfg.command_hz)
            try:
                return node.spin(cfg.duration if cfg.duration > 0 else float("inf"))
            except KeyboardInterrupt:
                return node.stats
    finally:
        core.close()
