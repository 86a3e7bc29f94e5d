"""The DiT action head with mixture of horizons, and flow matching, on tiny synthetic tensors (CPU)."""

from __future__ import annotations

import pytest
import torch

from vla.policy.action_head import ActionHeadConfig, DiTActionHead, disagreement, moh_loss
from vla.policy.flow import euler_sample, execute_count, noisy_sample, sample_time, to_velocity, velocity_target

B, N = 3, 5  # batch, backbone tokens


def tiny_config(**overrides) -> ActionHeadConfig:
    fields = dict(action_dim=3, state_dim=4, chunk=6, horizons=(2, 4, 6), width=32, depth=2, heads=2, cond_dim=16)
    return ActionHeadConfig(**(fields | overrides))


def inputs(cfg: ActionHeadConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    cond_mask = torch.ones(B, N, dtype=torch.bool)
    cond_mask[0, 3:] = False  # one sample with padded backbone tokens
    return {
        "noisy_actions": torch.randn(B, cfg.chunk, cfg.action_dim, generator=g),
        "t": torch.rand(B, generator=g),
        "state": torch.randn(B, cfg.state_dim, generator=g),
        "cond": torch.randn(B, N, cfg.cond_dim, generator=g),
        "cond_mask": cond_mask,
    }


def trained_head(cfg: ActionHeadConfig, steps: int = 3) -> DiTActionHead:
    """A head after a few Adam steps: adaLN-Zero and the zero output layer start most gradients at exactly 0."""
    torch.manual_seed(0)
    head = DiTActionHead(cfg)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    x = inputs(cfg)
    target = torch.randn(B, cfg.chunk, cfg.action_dim, generator=torch.Generator().manual_seed(1))
    for _ in range(steps):
        opt.zero_grad()
        moh_loss(head(**x), target)[0].backward()
        opt.step()
    return head


@pytest.mark.parametrize("fusion, k", [("gate", 3), ("mean", 3), ("single", 1)])
def test_output_shapes(fusion: str, k: int) -> None:
    cfg = tiny_config(fusion=fusion)
    out = DiTActionHead(cfg)(**inputs(cfg))
    assert out["branches"].shape == (k, B, 6, 3)
    assert out["fused"].shape == (B, 6, 3)
    assert out["gate"].shape == (B, 6, k)
    assert out["active"].shape == (6, k)
    assert disagreement(out).shape == (B, 6)
    assert all(torch.isfinite(v).all() for v in out.values() if v.is_floating_point())


def test_loss_falls_when_overfitting_one_batch() -> None:
    torch.manual_seed(0)
    cfg = tiny_config()
    head = DiTActionHead(cfg)
    x = inputs(cfg)
    target = torch.randn(B, cfg.chunk, cfg.action_dim, generator=torch.Generator().manual_seed(1))
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    losses = []
    for _ in range(100):
        opt.zero_grad()
        loss, parts = moh_loss(head(**x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert set(parts) == {"branches", "fused", "balance"}
    assert losses[-1] < 0.3 * losses[0], (losses[0], losses[-1])


def test_branch_sees_nothing_at_or_after_its_horizon() -> None:
    cfg = tiny_config()
    head = trained_head(cfg).eval()
    x = inputs(cfg)
    noisy = x.pop("noisy_actions").requires_grad_(True)
    out = head(noisy, **x)
    for k, h in enumerate(cfg.horizons[:-1]):
        (grad,) = torch.autograd.grad(out["branches"][k, :, :h].sum(), noisy, retain_graph=True)
        assert grad[:, :h].abs().sum() > 0  # sanity: the branch does depend on its own steps
        assert torch.equal(grad[:, h:], torch.zeros_like(grad[:, h:]))
        assert torch.equal(out["branches"][k, :, h:], torch.zeros_like(out["branches"][k, :, h:]))
    # and by perturbation: changing the last step leaves every shorter branch's outputs bit-identical
    perturbed = noisy.detach().clone()
    perturbed[:, -1] += 10.0
    out2 = head(perturbed, **x)
    for k in range(len(cfg.horizons) - 1):
        assert torch.equal(out["branches"][k], out2["branches"][k])
    assert not torch.equal(out["branches"][-1], out2["branches"][-1])


@pytest.mark.parametrize("training", [True, False])
def test_gate_weights_sum_to_one_over_active_horizons(training: bool) -> None:
    cfg = tiny_config()
    head = trained_head(cfg).train(training)
    out = head(**inputs(cfg))
    gate, active = out["gate"], out["active"]
    assert torch.equal(active, torch.arange(6)[:, None] < torch.tensor(cfg.horizons)[None, :])
    assert torch.allclose(gate.sum(dim=-1), torch.ones(B, 6))
    assert torch.equal(gate[:, ~active], torch.zeros_like(gate[:, ~active]))
    assert (gate[:, active] > 0).all()


@pytest.mark.parametrize("fusion", ["gate", "mean", "single"])
def test_every_parameter_gets_a_gradient(fusion: str) -> None:
    cfg = tiny_config(fusion=fusion)
    head = trained_head(cfg)
    head.zero_grad()
    x = inputs(cfg, seed=2)
    target = torch.randn(B, cfg.chunk, cfg.action_dim)
    moh_loss(head(**x), target)[0].backward()
    missing = [name for name, p in head.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"parameters without gradient: {missing}"


def test_euler_sample_is_deterministic_given_noise() -> None:
    cfg = tiny_config()
    head = trained_head(cfg).train()
    x = inputs(cfg)
    noise = torch.randn(B, cfg.chunk, cfg.action_dim, generator=torch.Generator().manual_seed(3))
    a1, d1 = euler_sample(head, x["state"], x["cond"], x["cond_mask"], steps=4, noise=noise)
    a2, d2 = euler_sample(head, x["state"], x["cond"], x["cond_mask"], steps=4, noise=noise.clone())
    assert head.training  # mode restored
    assert a1.shape == (B, 6, 3) and d1.shape == (B, 6)
    assert torch.equal(a1, a2) and torch.equal(d1, d2)
    assert (d1[:, :4] > 0).all() and torch.equal(d1[:, 4:], torch.zeros(B, 2))  # one horizon left: no spread
    a3, _ = euler_sample(head, x["state"], x["cond"], x["cond_mask"], steps=4, generator=torch.Generator())
    assert not torch.equal(a1, a3)


def test_execute_count_extends_only_while_under_threshold() -> None:
    # mean of the first 2 steps is 1.0, so with ratio 2 the threshold is 2.0
    d = torch.tensor([1.0, 1.0, 1.5, 1.9, 2.5, 0.1, 0.1, 0.1])
    assert execute_count(d, min_execute=2, max_execute=8, ratio=2.0) == 4  # stops at 2.5, never resumes
    assert execute_count(d, min_execute=2, max_execute=3, ratio=2.0) == 3  # capped by max_execute
    assert execute_count(d, min_execute=2, max_execute=8, ratio=1.0) == 2  # 1.5 is already over: min_execute
    assert execute_count(torch.ones(8), min_execute=2, max_execute=8, ratio=1.0) == 2  # strictly under
    batch = torch.stack([d, torch.full((8,), 0.5), torch.tensor([1.0, 1.0, 9, 0, 0, 0, 0, 0])])
    assert execute_count(batch, min_execute=2, max_execute=6, ratio=2.0).tolist() == [4, 6, 2]
    with pytest.raises(ValueError, match="max_execute"):
        execute_count(d, min_execute=3, max_execute=2, ratio=2.0)


def test_flow_convention_and_sample_prediction_round_trip() -> None:
    g = torch.Generator().manual_seed(0)
    actions, noise = torch.randn(4, 6, 3, generator=g), torch.randn(4, 6, 3, generator=g)
    t = sample_time(4, generator=g)
    x_t = noisy_sample(actions, noise, t)
    u = velocity_target(actions, noise)
    assert torch.allclose(to_velocity(actions, x_t, t, "sample"), u, atol=1e-4)
    assert torch.equal(to_velocity(u, x_t, t, "velocity"), u)
    assert torch.equal(noisy_sample(actions, noise, torch.ones(4)), noise)
    assert torch.equal(noisy_sample(actions, noise, torch.zeros(4)), actions)
    times = sample_time(20_000, generator=torch.Generator().manual_seed(0))
    assert 1e-3 <= times.min() and times.max() <= 1.0
    assert abs(times.mean().item() - 0.6) < 0.01  # Beta(1.5, 1) has mean 0.6: weighted toward noise (t = 1)


def test_sample_prediction_head_samples() -> None:
    cfg = tiny_config(prediction="sample")
    head = trained_head(cfg)
    x = inputs(cfg)
    actions, _ = euler_sample(head, x["state"], x["cond"], x["cond_mask"], steps=3, generator=torch.Generator())
    assert torch.isfinite(actions).all()


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"horizons": (2, 4)}, "horizons"),
        ({"horizons": (4, 2, 6)}, "horizons"),
        ({"horizons": (0, 6)}, "horizons"),
        ({"depth": 3}, "depth"),
        ({"fusion": "max"}, "fusion"),
        ({"prediction": "eps"}, "prediction"),
        ({"heads": 5}, "heads"),
    ],
)
def test_bad_config_names_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        tiny_config(**overrides)


def test_bad_input_shape_names_the_argument() -> None:
    cfg = tiny_config()
    x = inputs(cfg)
    x["state"] = torch.randn(B, cfg.state_dim + 1)
    with pytest.raises(ValueError, match="state"):
        DiTActionHead(cfg)(**x)
