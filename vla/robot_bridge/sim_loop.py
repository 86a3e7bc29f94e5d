"""Sim-in-the-loop: the MuJoCo robot in one process, the bridge in this one, DDS on loopback between them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from vla.robot_bridge.core import BridgeCore
from vla.robot_bridge.dds import DdsBridgeTransport, DdsConfig, loopback_uri
from vla.robot_bridge.dds_node import DdsBridgeNode


def run_sim_in_the_loop(policy, *, robot: str, task: str, init_index: int, duration_s: float, out: Path,
                        command_hz: float = 100.0, policy_hz: float = 10.0, blend: str = "crossfade",
                        domain_id: int = 0, joint_state_timeout: float = 0.05, camera_timeout: float = 0.2) -> dict:
    """Drive the simulated arm through `task` with `policy` over DDS; write and return out/report.json."""
    os.environ.setdefault("CYCLONEDDS_URI", loopback_uri())
    out.mkdir(parents=True, exist_ok=True)
    sim_result = out / "sim_result.json"
    sim_result.unlink(missing_ok=True)
    robot_process = subprocess.Popen(
        [sys.executable, "-m", "vla.robot_bridge.sim_robot", "--task", task, "--init-index", str(init_index),
         "--duration", str(duration_s), "--command-hz", str(int(command_hz)), "--domain-id", str(domain_id),
         "--result", str(sim_result)],
        env=os.environ.copy(), stdout=subprocess.DEVNULL)
    start = time.monotonic()
    core = BridgeCore.from_config(policy, robot, command_hz, policy_hz, blend, now=start,
                                  joint_state_timeout=joint_state_timeout, camera_timeout=camera_timeout)
    try:
        with DdsBridgeTransport("bridge", DdsConfig(domain_id=domain_id)) as transport:
            node = DdsBridgeNode(core, transport, command_hz)
            # The robot process needs a few seconds to start (imports, model); its run time is the episode.
            stats = node.spin(duration_s + 30.0,
                              should_stop=lambda: sim_result.is_file() or robot_process.poll() is not None)
    finally:
        core.close()
        if robot_process.poll() is None:
            robot_process.terminate()
        robot_process.wait(timeout=30)
    sim = json.loads(sim_result.read_text()) if sim_result.is_file() else {"success": False, "error": "no result"}
    diagnostics = core.diagnostics()
    counts = core.safety.diagnostics()
    interventions = {k: v for k, v in counts.items() if k not in ("published", "estop_latched") and v}
    jitter = stats.jitter_ms(1.0 / command_hz)
    report = {
        "task": task,
        "init_index": init_index,
        "task_success": bool(sim.get("success")),
        "commands_sent": stats.commands_sent,
        "limit_violations": core.audit.violations,
        "limit_violation_kinds": core.audit.kinds,
        "interventions": sum(interventions.values()),
        "interventions_by_kind": interventions,
        "fault": diagnostics["fault"],
        "fault_message": diagnostics["fault_message"],
        "fault_after_s": core.watchdog.fault.time - start if core.watchdog.fault else None,
        "loop_jitter_ms_p50": jitter["p50"],
        "loop_jitter_ms_p99": jitter["p99"],
        "command_hz": command_hz,
        "policy_hz": policy_hz,
        "sim": sim,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report
