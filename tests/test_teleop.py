"""Keyboard teleop: keys move the pinch target, and the action brings the gripper there."""

import numpy as np

from vla.data.teleop import KeyboardTeleop
from vla.sim.kinematics import PinchIK
from vla.sim.tabletop_env import TabletopEnv

W, D, R, Q, SPACE, ENTER, BACKSPACE = 87, 68, 82, 81, 32, 257, 259


def test_keys_drive_the_pinch_target_and_gripper():
    env = TabletopEnv(render_images=False)
    env.reset(seed=0)
    teleop = KeyboardTeleop(PinchIK(env.model, env.limits), step=0.01)
    teleop.start(env.data.qpos)
    start = teleop.target.copy()
    for key in (W, W, D, R):
        teleop.on_key(key)
    np.testing.assert_allclose(teleop.target - start, [0.02, -0.01, 0.01], atol=1e-12)
    teleop.on_key(Q)
    teleop.on_key(SPACE)
    assert teleop.gripper == 0.0
    assert teleop.take_event() is None
    teleop.on_key(ENTER)
    assert teleop.take_event() == "save" and teleop.take_event() is None
    teleop.on_key(BACKSPACE)
    assert teleop.take_event() == "discard"

    for _ in range(15):  # the arm follows the target through IK within a few control steps
        action = teleop.action(env.data.qpos)
        env.step(action)
    teleop.ik.set_qpos(env.data.qpos)
    pinch, _ = teleop.ik.site_pose()
    assert np.linalg.norm(pinch - teleop.target) < 0.005
    assert action[-1] == 0.0 and env.gripper_opening() < 0.5
