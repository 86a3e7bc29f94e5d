import os

os.environ.setdefault("MUJOCO_GL", "egl")  # offscreen rendering on CPU (see README)
