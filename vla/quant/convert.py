"""Convert a float policy into a quantized copy, save it as a checkpoint, and rebuild it in `from_pretrained`.

A quantized checkpoint is a normal checkpoint directory whose config.json carries a `quantization` section
(backend, scheme, the quantized module names, calibration factors). Its model.safetensors holds the float weights of
everything kept in floating point (with the ATM/OHB factors already folded in) and, for each quantized layer, only
its integer weights and scales under `<module>.<tensor>` (see `backends.Scheme.layer_tensors`).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import Tensor, nn

from vla.policy.policy import CONFIG_FILE, WEIGHTS_FILE, VLAPolicy
from vla.quant.backends import Scheme, get_scheme, is_quantized_layer
from vla.quant.layout import Layout

QUANT_SECTION = "quantization"


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _unfused(module: nn.Module, args: tuple) -> None:
    return None


def keep_encoder_layers_unfused(model: nn.Module) -> None:
    """torch's fused TransformerEncoderLayer kernel reads linear1/linear2.weight as plain float tensors (it would
    feed bitsandbytes' int8 storage to a float GEMM, and quantize_dynamic's weight is a method); a layer with any
    forward hook takes the module path, which calls the swapped layers."""
    for layer in model.modules():
        if isinstance(layer, nn.TransformerEncoderLayer) and any(
                type(m) is not nn.Linear or is_quantized_layer(m) for m in (layer.linear1, layer.linear2)):
            layer.register_forward_pre_hook(_unfused)


def quantize_policy(policy: VLAPolicy, layout: Layout, scheme: Scheme) -> VLAPolicy:
    """A quantized deep copy of `policy` (left untouched); `copy.quantization` describes what was done."""
    model = copy.deepcopy(policy).eval()
    names = layout.select(model)
    for name in names:
        _set_module(model, name, scheme.quantize(model.get_submodule(name)))
    keep_encoder_layers_unfused(model)
    model.quantization = {"backend": scheme.backend, "scheme": scheme.name, "modules": names}
    return model


def quantized_tensors(model: VLAPolicy) -> dict[str, Tensor]:
    """The quantized layers' stored tensors, keyed `<module>.<tensor>`."""
    scheme = get_scheme(model.quantization["backend"], model.quantization["scheme"])
    return {f"{name}.{key}": t.contiguous() for name in model.quantization["modules"]
            for key, t in scheme.layer_tensors(model.get_submodule(name)).items()}


def float_tensors(model: VLAPolicy) -> dict[str, Tensor]:
    """The stored float weights outside the quantized layers."""
    prefixes = tuple(f"{name}." for name in model.quantization["modules"])
    return {k: v for k, v in model.stored_state_dict().items() if not k.startswith(prefixes)}


def save_quantized(model: VLAPolicy, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint directory that `VLAPolicy.from_pretrained` loads back into the quantized model."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    section = {**model.quantization, **(extra or {})}
    (directory / CONFIG_FILE).write_text(json.dumps({**model.cfg.to_dict(), QUANT_SECTION: section}, indent=1))
    save_file({**float_tensors(model), **quantized_tensors(model)}, str(directory / WEIGHTS_FILE))
    model.normalizer.save(directory)
    return directory


def restore_quantized(policy: VLAPolicy, section: dict[str, Any], tensors: dict[str, Tensor], source: str) -> None:
    """Swap the float skeleton's layers named in `section` for quantized ones rebuilt from the stored `tensors`."""
    for key in ("backend", "scheme", "modules"):
        if key not in section:
            raise ValueError(f"{source}: {QUANT_SECTION}.{key} is missing")
    try:
        scheme = get_scheme(section["backend"], section["scheme"])
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from err
    modules = dict(policy.named_modules())
    for name in section["modules"]:
        if type(modules.get(name)) is not nn.Linear:
            raise ValueError(f"{source}: {QUANT_SECTION}.modules names {name!r}, which is not a linear layer here")
        prefix = f"{name}."
        layer = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
        if not layer:
            raise ValueError(f"{source}: no stored tensors for the quantized layer {name!r}")
        _set_module(policy, name, scheme.restore(modules[name], layer))
    keep_encoder_layers_unfused(policy)
    policy.quantization = {k: section[k] for k in ("backend", "scheme", "modules")}
