#!/usr/bin/env bash
# Reproduce the shipped embedded policy (checkpoints/tabletop): 50 expert demos per task (data seed 0), vla-train
# with the tiny config, then the evaluation reports that ship with it. Resumable: each stage skips what is done.
# Two cores: the demos are recorded as two halves in parallel (the episode seeds depend only on the task and the
# attempt, so the halves hold the same episodes a single `vla-record task=all` would) and trained on as one dataset.
set -euo pipefail
cd "$(dirname "$0")/.."
export MUJOCO_GL="${MUJOCO_GL:-egl}"
BIN=.venv/bin
STEPS="${STEPS:-12000}"
RUN=outputs/train/tabletop
HALF_A='[put_red_cube_in_bin,put_blue_cylinder_in_bin,put_purple_ball_in_bin,put_green_cube_on_plate,put_yellow_bar_on_plate]'
HALF_B='[stack_red_cube_on_green_cube,stack_green_cube_on_red_cube,stack_blue_cylinder_on_green_cube,push_red_cube_to_pad,push_yellow_bar_to_pad]'

$BIN/vla-record source=expert "task=$HALF_A" episodes=50 seed=0 root=data/tabletop_a resume=true &
$BIN/vla-record source=expert "task=$HALF_B" episodes=50 seed=0 root=data/tabletop_b resume=true
wait

# One intra-op thread (the shipped run: 98 min); TRAIN_THREADS=2 is faster only with nothing else on the cores.
# The shipped checkpoint predates policy=tiny's state dropout and environment-state probe (neither has yet been
# shown to do better in closed loop): RECIPE="" trains today's policy=tiny instead.
RECIPE="${RECIPE-policy.state_dropout=0 policy.env_state_weight=0}"
# shellcheck disable=SC2086  # RECIPE is a list of overrides
OMP_NUM_THREADS="${TRAIN_THREADS:-1}" $BIN/vla-train "dataset.root=[data/tabletop_a,data/tabletop_b]" policy=tiny \
  $RECIPE out=$RUN steps="$STEPS" save_every=500 resume=true

CKPT="$RUN/checkpoints/$(cat $RUN/checkpoints/last)/pretrained"
rm -rf checkpoints/tabletop && mkdir -p checkpoints && cp -r "$CKPT" checkpoints/tabletop
# The fixed initial states (EPISODES per task, all 50 by default) with the canonical instructions, then with the
# held-out paraphrases (HELD_OUT_EPISODES per task).
$BIN/vla-eval policy=checkpoints/tabletop env=tabletop tasks=all episodes="${EPISODES:-50}" \
  out=reports/tabletop_policy/canonical
$BIN/vla-eval policy=checkpoints/tabletop env=tabletop tasks=all episodes="${HELD_OUT_EPISODES:-50}" \
  instruction=held_out out=reports/tabletop_policy/held_out
cp reports/tabletop_policy/canonical/{report.json,report.md,success.png} checkpoints/tabletop/
