"""Inverse kinematics of the gripper's pinch point through MuJoCo's site Jacobian.

Damped least squares on position + orientation error, with a null-space pull
toward the home pose so the elbow stays up. Works on its own `MjData`, so it
never disturbs the simulation it plans for.
"""

from __future__ import annotations

import mujoco
import numpy as np

from vla.limits import RobotLimits


def top_down_rotation(yaw: float) -> np.ndarray:
    """Pinch-site orientation pointing straight down; the jaws close along (sin yaw, -cos yaw, 0)."""
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, s, 0.0], [s, -c, 0.0], [0.0, 0.0, -1.0]])


def site_yaw(xmat: np.ndarray) -> float:
    """Inverse of `top_down_rotation` for a site that points roughly down."""
    return float(np.arctan2(xmat[1, 0], xmat[0, 0]))


class PinchIK:
    def __init__(self, model: mujoco.MjModel, limits: RobotLimits, site: str = "pinch"):
        self.model = model
        self.data = mujoco.MjData(model)
        self.limits = limits
        self.site_id = model.site(site).id
        self.qpos_idx = np.array([model.joint(j).qposadr[0] for j in limits.joint_names])
        self.dof_idx = np.array([model.joint(j).dofadr[0] for j in limits.joint_names])
        self._jacp = np.zeros((3, model.nv))
        self._jacr = np.zeros((3, model.nv))

    def set_qpos(self, qpos: np.ndarray) -> None:
        self.data.qpos[:] = qpos
        mujoco.mj_kinematics(self.model, self.data)
        mujoco.mj_comPos(self.model, self.data)

    def site_pose(self) -> tuple[np.ndarray, np.ndarray]:
        return self.data.site_xpos[self.site_id].copy(), self.data.site_xmat[self.site_id].reshape(3, 3).copy()

    def solve(self, pos: np.ndarray, rot: np.ndarray, iterations: int = 16, damping: float = 1e-3) -> np.ndarray:
        """Arm joint positions that bring the site to (pos, rot), starting from the current `set_qpos` state."""
        q = self.data.qpos[self.qpos_idx].copy()
        target_quat = np.zeros(4)
        mujoco.mju_mat2Quat(target_quat, rot.flatten())
        site_quat, err_rot = np.zeros(4), np.zeros(3)
        for iteration in range(iterations):
            site_pos, site_mat = self.site_pose()
            mujoco.mju_mat2Quat(site_quat, site_mat.flatten())
            mujoco.mju_subQuat(err_rot, target_quat, site_quat)  # in the site's frame
            error = np.concatenate([pos - site_pos, site_mat @ err_rot])
            mujoco.mj_jacSite(self.model, self.data, self._jacp, self._jacr, self.site_id)
            jac = np.vstack([self._jacp, self._jacr])[:, self.dof_idx]  # (6, 7)
            jjt = jac @ jac.T + damping * np.eye(6)
            dq = jac.T @ np.linalg.solve(jjt, error)
            if iteration < iterations // 2:
                # Pull toward home in the null space first; the last iterations close the task error alone.
                null = np.eye(len(q)) - np.linalg.pinv(jac) @ jac
                dq += null @ (0.1 * (self.limits.home - q))
            q = np.clip(q + dq, self.limits.position_lower, self.limits.position_upper)
            self.data.qpos[self.qpos_idx] = q
            mujoco.mj_kinematics(self.model, self.data)
            mujoco.mj_comPos(self.model, self.data)
            if np.linalg.norm(error[:3]) < 1e-4 and np.linalg.norm(error[3:]) < 1e-3:
                break
        return q
