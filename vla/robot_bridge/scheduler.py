"""Chunk scheduler: runs a `ChunkPolicy` in a worker thread and turns its chunks into commands at the command rate.

The control loop calls `next_command(now, measured_state)` every command period (e.g. 100 Hz) and never waits for
inference. Time is injected (`now`, seconds on the caller's monotonic clock) and the policy-step timeline starts at
the first call: policy step p is the instant t0 + p / policy_hz.

- A chunk requested at policy step p (the observation is taken then, from `get_observation()`, on the control
  thread) holds in `actions[i]` the target for step p + i + 1. Commands are linear in joint space between
  consecutive waypoints, so they pass through each waypoint at its policy-rate instant.
- The inference delay, counted in policy steps (d = ceil(latency * policy_hz)), decides where the new chunk starts:
  its first d actions are in the past and skipped.
- Only `actions[:n_execute]` are ever commanded (`n_execute` from the policy's mixture of horizons). The next chunk
  is requested when the current one has d_est + blend_steps executable actions left (d_est from the last measured
  latency), so it arrives `blend_steps` before the current one runs out. If it is late, the last executable action
  is held (`stats.starved_steps`); a chunk that arrives with nothing executable left is dropped (`stats.chunks_stale`).
- The seam (config `blend`):
  - `crossfade`: over the `blend_steps` waypoints after the new chunk arrives, (1 - w) * old + w * new with
    w = j / (blend_steps + 1), j = 1..blend_steps; the old plan holds its last executable action if it runs out.
  - `temporal_ensemble`: each waypoint is the average of every chunk whose executable actions cover it, weighted
    exp(-ensemble_decay * i), i = 0 for the oldest (ACT's weighting). Chunks overlap over the `blend_steps` seam;
    the first chunk after a hold has nothing to average with and takes over at once.
  - `inpaint`: the policy gets `prefix=` (K, action_dim), the waypoints the current plan will still command from the
    observation on (K = max(executable actions left, d_est)); its chunk is expected to reproduce them, so the new
    chunk takes over at once. Only a policy whose `predict_chunk` names a `prefix` parameter qualifies (a bare
    `**kwargs` could drop it silently); any other falls back to `crossfade`, with a warning, in `self.blend`.
- Policy exceptions, malformed or non-finite chunks and inference past `inference_deadline_s` become `Fault`s for
  the caller (`pop_faults()`, to feed the watchdog) within the tick they become detectable. After a fault the
  scheduler requests nothing until `reset()`; a result that arrives late is dropped.

Deterministic mode: `inline_latency_s=L` runs `predict_chunk` on the calling thread at request time and releases
its result at the first tick with now >= request time + L, so tests replay inference delays without threads.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from vla.protocol import ChunkPolicy, split_chunk
from vla.robot_bridge.watchdog import Fault, FaultKind

logger = logging.getLogger(__name__)

BLENDS = ("crossfade", "temporal_ensemble", "inpaint")
_EPS = 1e-6  # policy steps (and seconds, for due times): absorbs float round-off of `now`, so that a tick on a
# policy instant commands exactly that waypoint and a tick at a result's due time sees it


@dataclass(frozen=True)
class SchedulerConfig:
    policy_hz: float = 10.0
    command_hz: float = 100.0
    action_dim: int = 8  # 7 joint targets (rad) + gripper opening
    blend: str = "crossfade"  # one of BLENDS
    blend_steps: int = 2  # policy steps of overlap between consecutive chunks
    ensemble_decay: float = 0.01  # temporal_ensemble: ACT's m in exp(-m * i); 0 = plain mean
    inference_deadline_s: float = 0.5
    expected_latency_s: float = 0.1  # inference latency assumed until the first one is measured

    def __post_init__(self) -> None:
        for key in ("policy_hz", "command_hz", "inference_deadline_s"):
            _check_number(key, getattr(self, key), positive=True)
        for key in ("expected_latency_s", "ensemble_decay"):
            _check_number(key, getattr(self, key), positive=False)
        if self.command_hz < self.policy_hz:
            raise ValueError(f"SchedulerConfig.command_hz ({self.command_hz}) must be at least policy_hz "
                             f"({self.policy_hz})")
        for key in ("action_dim", "blend_steps"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"SchedulerConfig.{key} must be a positive integer, got {value!r}")
        if self.blend not in BLENDS:
            raise ValueError(f"SchedulerConfig.blend must be one of {', '.join(BLENDS)}; got {self.blend!r}")


def _check_number(key: str, value: Any, positive: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        raise ValueError(f"SchedulerConfig.{key} must be a finite number {'> 0' if positive else '>= 0'}, "
                         f"got {value!r}")


@dataclass
class SchedulerStats:
    chunks_received: int = 0
    chunks_stale: int = 0  # arrived with no executable action left in the future: dropped
    starved_steps: int = 0  # waypoints that held the last executable action because the next chunk was late
    latency_s: float = math.nan  # the last measured inference latency (request to pickup)
    max_latency_s: float = 0.0


# ---------------------------------------------------------------------- plans: waypoint (action_dim,) per policy step
@dataclass
class _Hold:
    position: np.ndarray

    def at(self, step: int) -> np.ndarray:
        return self.position


@dataclass
class _Chunk:
    actions: np.ndarray  # (T, action_dim); actions[i] is the target for policy step origin + i + 1
    n_execute: int
    origin: int  # the policy step its observation was taken at
    first: int  # index of its first commanded action (those before it passed during inference)

    def index(self, step: int) -> int:
        return step - self.origin - 1

    def covers(self, step: int) -> bool:
        return self.first <= self.index(step) < self.n_execute

    def at(self, step: int) -> np.ndarray:
        # Past its executable actions the chunk holds its last one: never commands actions[n_execute:].
        return self.actions[min(max(self.index(step), 0), self.n_execute - 1)]


@dataclass
class _Crossfade:
    old: _Hold | _Chunk | _Crossfade
    new: _Chunk
    start: int  # the first blended step
    steps: int

    def weight(self, step: int) -> float:
        """The new chunk's weight; the old plan gets 1 - weight."""
        return min(max((step - self.start + 1) / (self.steps + 1), 0.0), 1.0)

    def at(self, step: int) -> np.ndarray:
        w = self.weight(step)
        return (1.0 - w) * self.old.at(step) + w * self.new.at(step)


@dataclass
class _Ensemble:
    chunks: list[_Chunk]  # oldest first; the last is the newest
    decay: float

    def at(self, step: int) -> np.ndarray:
        live = [chunk for chunk in self.chunks if chunk.covers(step)] or [self.chunks[-1]]
        weights = np.exp(-self.decay * np.arange(len(live)))  # ACT: i = 0 is the oldest prediction
        return weights @ np.stack([chunk.at(step) for chunk in live]) / weights.sum()


_Plan = _Hold | _Chunk | _Crossfade | _Ensemble


@dataclass
class _Request:
    future: Future
    origin: int  # policy step of the observation
    requested_at: float
    ready_at: float  # inline mode: when the result may be seen
    discard: bool = False  # abandoned by a fault or reset: drop the result
    deadline_reported: bool = False


@dataclass
class _Arrival:
    actions: np.ndarray
    n_execute: int
    origin: int
    step: int  # the first policy step at or after its pickup: it can take over from there


@dataclass
class _Timeline:
    t0: float
    step: int  # the last policy step whose boundary was processed
    waypoints: tuple[np.ndarray, np.ndarray]  # (at step, at step + 1), each (action_dim,)
    plan: _Plan
    current: _Chunk | None = None  # the newest chunk taken over


class ChunkScheduler:
    """Executes a policy's chunks at the command rate while the next one is inferred (see the module docstring)."""

    def __init__(
        self,
        policy: ChunkPolicy,
        get_observation: Callable[[], dict[str, Any]],
        config: SchedulerConfig,
        *,
        inline_latency_s: float | None = None,
    ):
        """`inline_latency_s` None: inference in a worker thread; a number: deterministic mode (module docstring)."""
        if inline_latency_s is not None and not (math.isfinite(inline_latency_s) and inline_latency_s >= 0):
            raise ValueError(f"inline_latency_s must be a finite number >= 0 or None, got {inline_latency_s!r}")
        self.policy = policy
        self.config = config
        self.get_observation = get_observation
        self.blend = config.blend
        if self.blend == "inpaint" and "prefix" not in _parameters(policy.predict_chunk):
            logger.warning("%s.predict_chunk has no `prefix` parameter: blend=inpaint falls back to crossfade",
                           type(policy).__name__)
            self.blend = "crossfade"
        self.inline_latency_s = inline_latency_s
        self._executor = None if inline_latency_s is not None else ThreadPoolExecutor(1, "vla-inference")
        self.stats = SchedulerStats()
        self._request: _Request | None = None
        self._faults: list[Fault] = []
        self.reset()

    # ------------------------------------------------------------------ public
    def next_command(self, now: float, measured_state: np.ndarray) -> np.ndarray:
        """The target (action_dim,) for this command period. Never blocks on inference.

        measured_state (action_dim,) is used only on the first call after construction or `reset()` without a
        hold position: the arm holds it until the first chunk arrives.
        """
        measured_state = np.asarray(measured_state, dtype=np.float64)
        if measured_state.shape != (self.config.action_dim,):
            raise ValueError(f"measured_state must have shape ({self.config.action_dim},), got {measured_state.shape}")
        if self._line is None:
            start = measured_state.copy() if self._hold is None else self._hold
            self._line = _Timeline(t0=now, step=-1, waypoints=(start, start), plan=_Hold(start))
        self._poll(now)
        position = (now - self._line.t0) * self.config.policy_hz  # in policy steps
        step = math.floor(position + _EPS)
        while self._line.step < step:  # more than one boundary only if the loop stalled
            self._line.step += 1
            self._on_step(self._line.step, now, may_request=self._line.step == step)
        frac = position - step
        frac = 0.0 if frac < _EPS else min(frac, 1.0)
        here, ahead = self._line.waypoints
        return here + frac * (ahead - here)

    def pop_faults(self) -> list[Fault]:
        """Faults since the last call (policy errors, inference deadline overruns), oldest first."""
        faults, self._faults = self._faults, []
        return faults

    def reset(self, hold: np.ndarray | None = None) -> None:
        """Start over: drop every chunk, hold `hold` (action_dim,) (default: the next measured state), request anew.

        An inference still running is abandoned (its result dropped); while it runs past its deadline it is
        reported again, so a hung policy cannot be reset away.
        """
        if hold is not None:
            hold = np.asarray(hold, dtype=np.float64).copy()
            if hold.shape != (self.config.action_dim,):
                raise ValueError(f"hold must have shape ({self.config.action_dim},), got {hold.shape}")
        self._hold = hold
        self._line: _Timeline | None = None  # started by the next `next_command`
        self._arrival: _Arrival | None = None
        self._faulted = False
        if self._request is not None:
            self._request.discard = True
            self._request.deadline_reported = False

    def close(self) -> None:
        """Stop the worker thread (a call in progress finishes in the background)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> ChunkScheduler:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ inference
    def _latency_steps(self) -> int:
        latency = self.config.expected_latency_s if math.isnan(self.stats.latency_s) else self.stats.latency_s
        return math.ceil(latency * self.config.policy_hz - _EPS)

    def _executable_left(self, step: int) -> int:
        """Executable actions of the current chunk from waypoint step + 1 on (0 when holding)."""
        current = self._line.current
        return 0 if current is None else max(current.n_execute - current.index(step + 1), 0)

    def _submit(self, step: int, now: float) -> None:
        obs = self.get_observation()
        kwargs = {}
        if self.blend == "inpaint":
            length = max(self._executable_left(step), self._latency_steps())
            plan = self._line.plan
            kwargs["prefix"] = np.array([plan.at(step + 1 + i) for i in range(length)], dtype=np.float32).reshape(
                length, self.config.action_dim)
        if self._executor is not None:
            future, ready_at = self._executor.submit(self._infer, obs, kwargs), now
        else:
            future, ready_at = Future(), now + self.inline_latency_s
            try:
                future.set_result(self._infer(obs, kwargs))
            except Exception as error:  # reported as a fault when the result is due, like the threaded path
                future.set_exception(error)
        self._request = _Request(future, origin=step, requested_at=now, ready_at=ready_at)

    def _infer(self, obs: dict[str, Any], kwargs: dict[str, Any]) -> tuple[np.ndarray, int]:
        actions, n_execute = split_chunk(self.policy.predict_chunk(obs, **kwargs), self.config.action_dim)
        bad_rows = np.flatnonzero(~np.all(np.isfinite(actions), axis=1))
        if len(bad_rows):
            raise ValueError(f"predict_chunk returned non-finite actions in rows {bad_rows.tolist()}")
        return actions.astype(np.float64), n_execute

    def _poll(self, now: float) -> None:
        """Pick up a finished inference, or report one that is past its deadline."""
        request = self._request
        if request is None:
            return
        elapsed = now - request.requested_at
        if request.future.done() and now + _EPS >= request.ready_at:
            self._request = None
            error = request.future.exception()
            if request.discard:
                logger.warning("dropping an abandoned inference result (%.3f s after its request)%s", elapsed,
                               f": it raised {error!r}" if error else "")
            elif error is not None:
                self._fail(Fault(FaultKind.POLICY_ERROR, f"predict_chunk failed: {type(error).__name__}: {error}",
                                 now))
            else:
                actions, n_execute = request.future.result()
                self.stats.chunks_received += 1
                self.stats.latency_s = elapsed
                self.stats.max_latency_s = max(self.stats.max_latency_s, elapsed)
                step = math.ceil((now - self._line.t0) * self.config.policy_hz - _EPS)
                self._arrival = _Arrival(actions, n_execute, request.origin, step)
        elif elapsed > self.config.inference_deadline_s and not request.deadline_reported:
            request.deadline_reported = True
            request.discard = True
            self._fail(Fault(FaultKind.INFERENCE_DEADLINE, f"inference still running after {elapsed:.3f} s "
                             f"(inference_deadline_s={self.config.inference_deadline_s})", now))

    def _fail(self, fault: Fault) -> None:
        self._faults.append(fault)
        self._faulted = True

    # ------------------------------------------------------------------ timeline
    def _on_step(self, step: int, now: float, may_request: bool) -> None:
        """Policy step boundary: take over an arrived chunk, request the next one, commit waypoint step + 1.

        `may_request` is False for the boundaries a stalled loop skipped: an observation taken now belongs to the
        latest one.
        """
        self._take_over(step)
        idle = not self._faulted and self._request is None and self._arrival is None
        if may_request and idle and self._executable_left(step) <= self._latency_steps() + self.config.blend_steps:
            self._submit(step, now)
            self._poll(now)  # inline mode with no latency: the chunk takes over at once
            self._take_over(step)
        current = self._line.current
        if not self._faulted and current is not None and current.index(step + 1) >= current.n_execute:
            self.stats.starved_steps += 1
        plan = self._line.plan
        if isinstance(plan, _Crossfade) and plan.weight(step + 1) >= 1.0:
            self._line.plan = plan = plan.new  # the seam is over: drop the old plan
        self._line.waypoints = (self._line.waypoints[1], plan.at(step + 1))

    def _take_over(self, step: int) -> None:
        arrival = self._arrival
        if arrival is None or step < arrival.step:
            return
        self._arrival = None
        first = step - arrival.origin  # d = ceil(latency * policy_hz): its actions before this one are past
        if first >= arrival.n_execute:
            self.stats.chunks_stale += 1
            logger.warning("dropping a chunk that arrived %d policy steps after its observation, past its "
                           "n_execute=%d", first, arrival.n_execute)
            return
        chunk = _Chunk(arrival.actions, arrival.n_execute, arrival.origin, first)
        plan = self._line.plan
        if self.blend == "crossfade":
            self._line.plan = _Crossfade(plan, chunk, start=step + 1, steps=self.config.blend_steps)
        elif self.blend == "temporal_ensemble":
            older = [c for c in plan.chunks if c.covers(step + 1)] if isinstance(plan, _Ensemble) else []
            self._line.plan = _Ensemble([*older, chunk], self.config.ensemble_decay)
        else:
            self._line.plan = chunk
        self._line.current = chunk


def _parameters(function: Callable) -> dict[str, inspect.Parameter]:
    try:
        return dict(inspect.signature(function).parameters)
    except (TypeError, ValueError):  # builtins without a signature
        return {}
