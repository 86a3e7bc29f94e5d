"""vla/quant on a tiny random-weight policy: every backend loads and predicts, the layout is respected, ATM/OHB stay in
their clamps and move the ratios toward 1, bad layouts and config values fail naming the key, and vla-quantize writes
a loadable checkpoint with the report the contract names."""

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from test_policy import STATS, make_obs, perturbed, tiny_config
from torch import nn

from vla.cli import configs
from vla.limits import CONF_DIR
from vla.policy.normalize import Normalizer
from vla.policy.policy import WEIGHTS_FILE, VLAPolicy
from vla.quant.backends import SCHEMES, get_scheme, is_quantized_layer
from vla.quant.calibrate import CalibrationSettings, attention_sites, calibrate, measure
from vla.quant.convert import quantize_policy, save_quantized
from vla.quant.layout import DEFAULT_KEEP, DEFAULT_QUANTIZE, Layout

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
ALL_SCHEMES = [(backend, name) for backend, names in SCHEMES.items() for name in names]
INT8_TYPES = {"w8a8": torch.int8, "w8": torch.int8, "int8": torch.int8, "nf4": torch.uint8}  # nf4: 2 per byte


@pytest.fixture(scope="module")
def policy() -> VLAPolicy:
    """Width 64 (bitsandbytes' nf4 needs whole 64-blocks per row), every weight perturbed so all of them matter."""
    torch.manual_seed(0)
    return perturbed(VLAPolicy(tiny_config(backbone={"width": 64}, head={"width": 64}), Normalizer(STATS)))


@pytest.fixture(scope="module")
def buffer() -> list[dict]:
    return [make_obs(seed=i) for i in range(32)]


def float_linears(model: nn.Module) -> dict[str, nn.Linear]:
    return {n: m for n, m in model.named_modules() if type(m) is nn.Linear and not is_quantized_layer(m)}


@pytest.mark.parametrize(("backend", "scheme"), ALL_SCHEMES)
def test_quantized_checkpoint_loads_predicts_and_respects_the_layout(policy, backend, scheme, tmp_path):
    original = copy.deepcopy(policy.state_dict())
    quant = quantize_policy(policy, Layout(), get_scheme(backend, scheme))
    names = quant.quantization["modules"]
    assert {n.split(".")[0] for n in names} == {"backbone", "head"}
    assert any(".mlp." in n for n in names) and not any(".attn." in n or n == "head.gate" for n in names)
    float_dir = policy.save_pretrained(tmp_path / "float")
    quant_dir = save_quantized(quant, tmp_path / "quant")
    assert (quant_dir / WEIGHTS_FILE).stat().st_size < 0.8 * (float_dir / WEIGHTS_FILE).stat().st_size

    loaded = VLAPolicy.from_pretrained(quant_dir)
    assert all(torch.equal(v, original[k]) for k, v in policy.state_dict().items())  # the float model is untouched
    for name in names:  # quantized: a low-bit layer type holding integer weights
        layer = loaded.get_submodule(name)
        assert is_quantized_layer(layer), name
        weight = layer.weight.qdata if backend == "torchao" else layer.weight
        assert weight.dtype == INT8_TYPES[scheme], name
    kept = float_linears(loaded)
    assert set(kept) == {n for n, m in policy.named_modules() if type(m) is nn.Linear} - set(names)
    float_modules = dict(policy.named_modules())
    for name, layer in kept.items():  # kept: plain float layers with the float model's exact weights
        assert layer.weight.dtype == torch.float32 and torch.equal(layer.weight, float_modules[name].weight), name

    obs = make_obs(seed=5)
    for model in (policy, quant, loaded):
        model.reset(0)
    reference, (in_memory, _), (actions, n_execute) = (policy.predict_chunk(obs)[0], quant.predict_chunk(obs),
                                                       loaded.predict_chunk(obs))
    assert actions.shape == reference.shape and np.isfinite(actions).all() and 1 <= n_execute <= len(actions)
    np.testing.assert_allclose(actions, in_memory, atol=1e-6)  # stored integers, not re-quantized floats
    assert 0 < float(np.mean((actions - reference) ** 2)) < 0.05 * float(np.var(reference))


def test_layout_pattern_that_matches_nothing_is_an_error_naming_it(policy):
    with pytest.raises(ValueError, match=r"layout.quantize: pattern 'head.blocks.\*.mlpp.0' matches no nn.Linear"):
        Layout(quantize=("head.blocks.*.mlp.0", "head.blocks.*.mlpp.0")).select(policy)
    with pytest.raises(ValueError, match=r"layout.keep: pattern 'head.gat' matches no module"):
        Layout(keep=("head.gat",)).select(policy)
    with pytest.raises(ValueError, match="layout.quantize: pattern 'head.final_norm' matches no nn.Linear"):
        Layout(quantize=("head.final_norm",)).select(policy)  # a LayerNorm is not quantizable
    with pytest.raises(ValueError, match="exclude every layer"):
        Layout(quantize=("head.gate",)).select(policy)  # the gate is kept by default


def test_the_default_layout_is_the_one_in_conf(policy):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        configs.register()
        cfg = compose(config_name="quantize")
    assert tuple(cfg.layout.quantize) == DEFAULT_QUANTIZE and tuple(cfg.layout.keep) == DEFAULT_KEEP
    assert (cfg.quant.backend, cfg.quant.scheme) == ("torchao", "w8a8") and cfg.eval.episodes * 10 >= 200


def _log_ratio(result, name: str, stage: str) -> tuple[float, float]:
    logit = max(abs(math.log(r)) for r in result.logit_std_ratio[name][stage])
    return logit, abs(math.log(result.rms_ratio[name][stage]))


def test_atm_and_ohb_stay_in_their_clamps_and_move_the_ratios_toward_one(policy, buffer):
    quant = quantize_policy(policy, Layout(), get_scheme("bitsandbytes", "nf4"))
    # A miscalibrated quantized model: DiT logits 2x too hot (beyond alpha's clamp), fusion outputs 0.6x too quiet
    sites = attention_sites(quant)
    sites["head.blocks.0.attn"].scale_query(torch.full((2,), 2.0))
    sites["backbone.fusion.layers.0.self_attn"].scale_output(0.6)
    settings = CalibrationSettings()
    result = calibrate(policy, quant, buffer, settings)
    assert set(result.alpha) == set(result.beta) == {"backbone.fusion.layers.0.self_attn", "head.blocks.0.attn",
                                                     "head.blocks.1.attn"}  # the ViT runs before any int layer
    for name in result.alpha:
        assert all(settings.alpha_min <= a <= settings.alpha_max for a in result.alpha[name]), name
        assert abs(math.log(result.beta[name])) <= settings.max_log_beta + 1e-9, name
        (logit_before, rms_before), (logit_after, rms_after) = (_log_ratio(result, name, stage)
                                                                for stage in ("before", "after"))
        assert logit_after <= logit_before + 1e-6 and rms_after <= rms_before + 1e-6, name
    assert result.alpha["head.blocks.0.attn"] == pytest.approx([settings.alpha_min] * 2)  # 0.5 clamped to 0.7
    assert _log_ratio(result, "head.blocks.0.attn", "after")[0] == pytest.approx(abs(math.log(0.5 / 0.7)), rel=0.05)
    assert result.beta["backbone.fusion.layers.0.self_attn"] == pytest.approx(math.exp(0.3))  # 1/0.6 clamped
    # the fold is real: measured afresh, the corrected layer's ratios are what the result says
    fresh = measure(quant, buffer, ["head.blocks.1.attn"], settings.seed)["head.blocks.1.attn"]
    ref = measure(policy, buffer, ["head.blocks.1.attn"], settings.seed)["head.blocks.1.attn"]
    assert (ref.logit_std / fresh.logit_std).tolist() == pytest.approx(result.logit_std_ratio["head.blocks.1.attn"]
                                                                       ["after"], rel=1e-3)


def test_bad_scheme_and_unknown_key_fail_naming_the_key(tmp_path):
    with pytest.raises(ValueError, match="quant.scheme for backend torchao must be one of"):
        get_scheme("torchao", "nf4")
    with pytest.raises(ValueError, match="quant.backend must be one of"):
        get_scheme("quanto", "w8a8")
    result = run_quantize(f"out={tmp_path}", "quant.bogus=1")
    assert result.returncode != 0 and "quant.bogus" in result.stderr


def run_quantize(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    return subprocess.run([str(Path(sys.executable).parent / "vla-quantize"), *args], capture_output=True, text=True,
                          timeout=300, cwd=REPO, env=env)


def test_vla_quantize_writes_a_loadable_checkpoint_and_the_contract_report(policy, tmp_path):
    checkpoint = policy.save_pretrained(tmp_path / "float")
    out = tmp_path / "w8a8"
    result = run_quantize(f"checkpoint={checkpoint}", "quant=w8a8", f"out={out}", "eval.episodes=1",
                          "eval.tasks=put_red_cube_in_bin", "eval.num_envs=1", "report.latency_runs=2",
                          "report.ablation=false", "report.threads=1", "report.observations=4")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    wb = report["weight_bytes"]
    assert 0 < wb["quantized"] < 0.4 * wb["float"] and wb["model_quantized"] < wb["model_float"]
    assert report["latency_ms"]["float_p50"] > 0 and report["latency_ms"]["quantized_p50"] > 0
    assert 0 < report["action_mse"] < report["action_variance"]
    assert report["quantized_modules"] == json.loads((out / "config.json").read_text())["quantization"]["modules"]
    assert report["peak_rss_mib"]["quantized"] > 0
    assert report["success"]["episodes"] == {"float": 1, "quantized": 1}
    assert all(0.9 < c <= 1 + 1e-9 for c in report["layer_cosine"].values())
    assert (out / "report.md").is_file() and (out / "report.png").stat().st_size > 0
    loaded = VLAPolicy.from_pretrained(out)
    assert all(is_quantized_layer(loaded.get_submodule(n)) for n in report["quantized_modules"])
    assert np.isfinite(loaded.predict_chunk(make_obs())[0]).all()
