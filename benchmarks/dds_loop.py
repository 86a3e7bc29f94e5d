"""Control-loop timing over DDS on loopback, against a plain UDP socket on 127.0.0.1 in the same run.

Every measurement runs twice, between two processes: over the bridge's DDS transport (`vla.robot_bridge.dds`,
Cyclone on the loopback config) and over a UDP socket carrying the same CDR payload (the anchor: same Python
message work, no DDS). Reported as DDS / UDP ratios.
- Period jitter at 100 Hz and 500 Hz: a publisher process sends a Float64MultiArray command (8 values) on an
  absolute schedule; a subscriber process stamps each arrival; median and p99 of |inter-arrival period - target|.
  The publisher's own |send period - target| is reported too: it bounds what any transport can do.
- Observation-to-command round trip: process A publishes a JointState (7 joints), process B replies with a command
  computed from it as soon as it arrives (in the DDS listener); A's send-to-receipt time, median and p99.
Writes benchmarks/results/dds_loop.{json,md}.

    python benchmarks/dds_loop.py [--seconds 5] [--round-trips 1000] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

from vla.robot_bridge import msgs
from vla.robot_bridge.dds import DdsBridgeTransport, DdsConfig, loopback_uri

JOINTS = [f"panda_joint{i}" for i in range(1, 8)]
WARMUP = 50  # samples dropped from every measurement: discovery, first-touch allocations, caches
PING_HZ = 200  # round trips are paced like a fast control loop, not back to back
RECV_TIMEOUT_S = 10.0


def command(seq: int) -> msgs.Float64MultiArray:
    """7 joint targets + gripper; the first value carries the sequence number."""
    return msgs.float64_multi_array([float(seq), *np.linspace(-1.0, 1.0, 7)])


def observation(seq: int) -> msgs.JointState:
    return msgs.joint_state(JOINTS, [float(seq), *np.linspace(-1.0, 1.0, 6)], np.zeros(7), time.time_ns())


def reply(state: msgs.JointState) -> msgs.Float64MultiArray:
    """B's work per observation: read the joints by name, send targets (the first carries A's sequence number)."""
    return msgs.float64_multi_array(np.append(msgs.to_numpy(state, JOINTS), 1.0))


def dds_config(domain_id: int) -> DdsConfig:
    return DdsConfig(domain_id=domain_id, cameras={})


def ready() -> None:
    print("ready", flush=True)


def sleep_until(deadline_ns: int) -> None:
    remaining = deadline_ns - time.perf_counter_ns()
    if remaining > 0:
        time.sleep(remaining / 1e9)


# roles, each run in its own process; each prints its result as one JSON line


def rate_pub(transport: str, hz: float, count: int, domain_id: int, port: int) -> dict:
    period_ns = round(1e9 / hz)
    if transport == "dds":
        bridge = DdsBridgeTransport("bridge", dds_config(domain_id))
        if not bridge.wait_matched(["command"], RECV_TIMEOUT_S):
            raise RuntimeError("no subscriber matched the command topic")
        time.sleep(0.2)  # let the subscriber's side of the match settle as well

        def send(seq: int) -> None:
            bridge.publish_command(command(seq))
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

        def send(seq: int) -> None:
            sock.sendto(command(seq).serialize(), ("127.0.0.1", port))

    sent = []
    start = time.perf_counter_ns()
    for seq in range(count):
        sleep_until(start + seq * period_ns)
        send(seq)
        sent.append(time.perf_counter_ns())
    time.sleep(0.2)  # a reliable writer may still be delivering
    return {"sent_ns": sent}


def udp_receiver(port: int) -> socket.socket:
    """A loopback UDP socket bound to `port`, announced ready to the parent process."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", port))
    sock.settimeout(RECV_TIMEOUT_S)
    ready()
    return sock


def rate_sub(transport: str, count: int, domain_id: int, port: int) -> dict:
    arrivals: list[tuple[int, int]] = []  # (arrival time, sequence number)
    if transport == "dds":
        robot = DdsBridgeTransport("robot", dds_config(domain_id))
        done = threading.Event()

        def on_command(msg: msgs.Float64MultiArray) -> None:
            arrivals.append((time.perf_counter_ns(), int(msg.data[0])))
            if msg.data[0] == count - 1:
                done.set()

        robot.listen("command", on_command)
        ready()
        done.wait(count / 50 + RECV_TIMEOUT_S)  # any rate down to 50 Hz
    else:
        sock = udp_receiver(port)
        seq = -1
        while seq != count - 1:
            try:
                payload = sock.recv(65536)
            except TimeoutError:
                break
            seq = int(msgs.Float64MultiArray.deserialize(payload).data[0])
            arrivals.append((time.perf_counter_ns(), seq))
    return {"arrivals": arrivals}


def echo(transport: str, count: int, domain_id: int, port: int) -> dict:
    replies = 0
    if transport == "dds":
        bridge = DdsBridgeTransport("bridge", dds_config(domain_id))
        done = threading.Event()

        def on_state(state: msgs.JointState) -> None:
            nonlocal replies
            bridge.publish_command(reply(state))
            replies += 1
            if state.position[0] == count - 1:
                done.set()

        bridge.listen("joint_states", on_state)
        ready()
        done.wait(count / 50 + RECV_TIMEOUT_S)  # any pacing down to 50 Hz
        time.sleep(0.2)  # a reliable writer may still be delivering the last reply
    else:
        sock = udp_receiver(port)
        seq = -1
        while seq != count - 1:
            try:
                payload, address = sock.recvfrom(65536)
            except TimeoutError:
                break
            state = msgs.JointState.deserialize(payload)
            sock.sendto(reply(state).serialize(), address)
            replies += 1
            seq = int(state.position[0])
    return {"replies": replies}


def ping(transport: str, count: int, domain_id: int, port: int) -> dict:
    """Round-trip times in ns (None where no reply came within a second)."""
    received = threading.Event()
    reply_at: dict[int, int] = {}
    if transport == "dds":
        robot = DdsBridgeTransport("robot", dds_config(domain_id))

        def on_command(msg: msgs.Float64MultiArray) -> None:
            reply_at[int(msg.data[0])] = time.perf_counter_ns()  # stamped on receipt, not when the main thread wakes
            received.set()

        robot.listen("command", on_command)
        if not robot.wait_matched(["joint_states", "command"], RECV_TIMEOUT_S):
            raise RuntimeError("the echo process did not match")
        time.sleep(0.2)

        def send_and_wait(seq: int) -> None:
            robot.publish_joint_state(observation(seq))
            received.wait(1.0)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(1.0)

        def send_and_wait(seq: int) -> None:
            sock.sendto(observation(seq).serialize(), ("127.0.0.1", port))
            try:
                payload = sock.recv(65536)
            except TimeoutError:
                return
            reply_at[int(msgs.Float64MultiArray.deserialize(payload).data[0])] = time.perf_counter_ns()

    rtts = []
    start = time.perf_counter_ns()
    for seq in range(count):
        sleep_until(start + round(seq * 1e9 / PING_HZ))
        received.clear()
        sent = time.perf_counter_ns()
        send_and_wait(seq)
        rtts.append(reply_at[seq] - sent if seq in reply_at else None)
    return {"rtt_ns": rtts}


ROLES = {"rate-pub": rate_pub, "rate-sub": rate_sub, "echo": echo, "ping": ping}


# orchestration


def spawn(role: str, **kwargs: object) -> subprocess.Popen:
    """A role in a fresh process; its stderr goes to ours, its stdout is its result."""
    command_line = [sys.executable, __file__, "--role", role, "--role-args", json.dumps(kwargs)]
    env = {**os.environ, "CYCLONEDDS_URI": loopback_uri()}
    return subprocess.Popen(command_line, stdout=subprocess.PIPE, text=True, env=env)


def result(process: subprocess.Popen) -> dict:
    out = process.stdout.read()  # every role ends within its own receive timeouts
    if process.wait() != 0:
        raise RuntimeError(f"benchmark process {process.args[3]} failed (its stderr is above)")
    return json.loads(out.strip().splitlines()[-1])


def run_pair(server_role: str, client_role: str, **kwargs: object) -> tuple[dict, dict]:
    """Start the server process, wait until it listens, run the client against it; both results."""
    server = spawn(server_role, **{k: v for k, v in kwargs.items() if k != "hz"})
    try:
        if server.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{server_role} did not start (its stderr is above)")
        client = spawn(client_role, **kwargs)
        return result(server), result(client)
    finally:
        server.kill()


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def summary_ms(values_ns: np.ndarray) -> dict:
    return {
        "p50_ms": float(np.median(values_ns) / 1e6),
        "p99_ms": float(np.percentile(values_ns, 99) / 1e6),
        "max_ms": float(np.max(values_ns) / 1e6),
    }


def jitter(transport: str, hz: float, seconds: float, domain_id: int) -> dict:
    count = WARMUP + round(hz * seconds)
    sub, pub = run_pair("rate-sub", "rate-pub", transport=transport, hz=hz, count=count, domain_id=domain_id,
                        port=free_udp_port())
    target_ns = 1e9 / hz
    arrivals = np.array(sub["arrivals"], dtype=np.int64).reshape(-1, 2)
    arrivals = arrivals[arrivals[:, 1] >= WARMUP]
    consecutive = np.diff(arrivals[:, 1]) == 1  # a period across a lost sample is not a period
    periods = np.diff(arrivals[:, 0])[consecutive]
    sent_periods = np.diff(np.array(pub["sent_ns"][WARMUP:], dtype=np.int64))
    return {
        "samples": int(len(periods)),
        "lost": int(count - WARMUP - len(arrivals)),
        "mean_period_ms": float(periods.mean() / 1e6),
        **summary_ms(np.abs(periods - target_ns)),
        "sender": summary_ms(np.abs(sent_periods - target_ns)),
    }


def round_trip(transport: str, count: int, domain_id: int) -> dict:
    _, pinged = run_pair("echo", "ping", transport=transport, count=WARMUP + count, domain_id=domain_id,
                         port=free_udp_port())
    rtts = pinged["rtt_ns"][WARMUP:]
    answered = np.array([r for r in rtts if r is not None], dtype=np.int64)
    return {"samples": int(len(answered)), "lost": len(rtts) - len(answered), **summary_ms(answered)}


def ratios(dds: dict, udp: dict) -> dict:
    return {"ratio_p50": dds["p50_ms"] / udp["p50_ms"], "ratio_p99": dds["p99_ms"] / udp["p99_ms"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per rate and transport")
    parser.add_argument("--round-trips", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--role", choices=sorted(ROLES), help=argparse.SUPPRESS)
    parser.add_argument("--role-args", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        os.environ["CYCLONEDDS_URI"] = loopback_uri()  # before this process creates its participant
        print(json.dumps(ROLES[args.role](**json.loads(args.role_args))), flush=True)
        return

    domain_id = 1 + os.getpid() % 200  # a run of its own: concurrent runs on the machine stay apart
    results: dict = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_1m_at_start": os.getloadavg()[0],
        },
        "cyclonedds": version("cyclonedds"),
        "config": {"seconds": args.seconds, "round_trips": args.round_trips, "warmup": WARMUP, "ping_hz": PING_HZ,
                   "domain_id": domain_id},
        "jitter": {},
    }
    for hz in (100, 500):
        dds, udp = (jitter(transport, hz, args.seconds, domain_id) for transport in ("dds", "udp"))
        results["jitter"][str(hz)] = {"dds": dds, "udp": udp, **ratios(dds, udp)}
    dds, udp = (round_trip(transport, args.round_trips, domain_id) for transport in ("dds", "udp"))
    results["round_trip"] = {"dds": dds, "udp": udp, **ratios(dds, udp)}

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "dds_loop.json").write_text(json.dumps(results, indent=2))
    rows = []
    for hz, entry in results["jitter"].items():
        rows.append((f"period jitter at {hz} Hz, abs(period - {1000 / int(hz):g} ms)", entry))
    rows.append((f"JointState -> command round trip ({PING_HZ} Hz pacing)", results["round_trip"]))
    table = [
        "| measurement (ms) | DDS p50 | DDS p99 | UDP p50 | UDP p99 | DDS/UDP p50 | DDS/UDP p99 |",
        "|---|---|---|---|---|---|---|",
    ] + [
        f"| {name} | {e['dds']['p50_ms']:.3f} | {e['dds']['p99_ms']:.3f} | {e['udp']['p50_ms']:.3f} | "
        f"{e['udp']['p99_ms']:.3f} | {e['ratio_p50']:.2f} | {e['ratio_p99']:.2f} |"
        for name, e in rows
    ]
    senders = "; ".join(
        f"{hz} Hz: p50 {e['dds']['sender']['p50_ms']:.3f} / p99 {e['dds']['sender']['p99_ms']:.3f} ms (DDS run), "
        f"{e['udp']['sender']['p50_ms']:.3f} / {e['udp']['sender']['p99_ms']:.3f} ms (UDP run)"
        for hz, e in results["jitter"].items()
    )
    lost = sum(e[t]["lost"] for e in [*results["jitter"].values(), results["round_trip"]] for t in ("dds", "udp"))
    machine = results["machine"]
    md = "\n".join([
        "# DDS control loop on loopback", "",
        f"Machine: {machine['platform']}, {machine['cpu_count']} CPUs, Python {machine['python']}, "
        f"cyclonedds {results['cyclonedds']}; load average {machine['load_average_1m_at_start']:.2f} at start. "
        f"{args.seconds:g} s per rate and transport, {args.round_trips} round trips, first {WARMUP} samples dropped.",
        "", *table, "",
        f"The publisher's own send-period jitter (the floor for both transports): {senders}. "
        f"Samples lost in all runs: {lost}.", "",
    ])
    (args.out / "dds_loop.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
