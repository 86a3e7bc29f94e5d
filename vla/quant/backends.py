"""Quantization backends: one float `nn.Linear` in, a real low-bit layer out, and back from stored tensors.

- torchao w8a8: `nn.Linear` with an `Int8Tensor` weight (int8 per row); activations are quantized per token on
  the fly and the matmul is int8 x int8 (`torch._int_mm`).
- torchao w8: the same weight, float activations; the weight is cast to float inside every matmul.
- bitsandbytes int8: `bnb.nn.Linear8bitLt` with threshold 0 (no fp16 outlier columns), int8 per row, int8 matmul.
- bitsandbytes nf4: `bnb.nn.Linear4bit`, 4-bit NF4 in blocks of 64, dequantized per matmul.

Every scheme stores only integer weights and their scales (`layer_tensors`), and `restore_layer` rebuilds the layer
from exactly those tensors, so a quantized checkpoint is small on disk and loads without a float weight.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

SCHEMES = {"torchao": ("w8a8", "w8"), "bitsandbytes": ("int8", "nf4")}


@dataclass(frozen=True)
class Scheme:
    backend: str
    name: str
    bits: int  # weight bits
    quantize: Callable[[nn.Linear], nn.Module]
    layer_tensors: Callable[[nn.Module], dict[str, Tensor]]  # what a checkpoint stores for one quantized layer
    restore: Callable[[nn.Linear, dict[str, Tensor]], nn.Module]  # a float skeleton + stored tensors -> the layer

    @property
    def label(self) -> str:
        return f"{self.backend}:{self.name}"


def get_scheme(backend: str, name: str) -> Scheme:
    if backend not in SCHEMES:
        raise ValueError(f"quant.backend must be one of {sorted(SCHEMES)}, got {backend!r}")
    if name not in SCHEMES[backend]:
        raise ValueError(f"quant.scheme for backend {backend} must be one of {list(SCHEMES[backend])}, got {name!r}")
    return _TORCHAO[name] if backend == "torchao" else _BITSANDBYTES[name]


def is_quantized_layer(module: nn.Module) -> bool:
    """True for a layer that one of the schemes produced (and whose weight really is low-bit)."""
    from torchao.quantization import Int8Tensor

    weight = getattr(module, "weight", None)
    if isinstance(weight, Int8Tensor):
        return weight.qdata.dtype == torch.int8
    bnb = _bnb()
    if isinstance(module, bnb.nn.Linear8bitLt):
        return weight.dtype == torch.int8
    if isinstance(module, bnb.nn.Linear4bit):
        return weight.dtype == torch.uint8 and getattr(weight, "quant_state", None) is not None
    return False


def _bias(linear: nn.Linear) -> dict[str, Tensor]:
    return {} if linear.bias is None else {"bias": linear.bias.detach()}


# ------------------------------------------------------------------------------------------------ torchao
def _torchao_config(name: str):
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig

    return Int8DynamicActivationInt8WeightConfig() if name == "w8a8" else Int8WeightOnlyConfig()


def _torchao_quantize(name: str) -> Callable[[nn.Linear], nn.Module]:
    def quantize(linear: nn.Linear) -> nn.Module:
        from torchao.quantization import quantize_

        holder = nn.Sequential(linear)  # quantize_ swaps the weights of the linear layers *inside* a module
        quantize_(holder, _torchao_config(name))
        return holder[0]

    return quantize


def _torchao_tensors(layer: nn.Module) -> dict[str, Tensor]:
    return {"weight.qdata": layer.weight.qdata, "weight.scale": layer.weight.scale, **_bias(layer)}


def _torchao_restore(name: str) -> Callable[[nn.Linear, dict[str, Tensor]], nn.Module]:
    def restore(linear: nn.Linear, tensors: dict[str, Tensor]) -> nn.Module:
        from torchao.quantization import Int8Tensor, PerRow
        from torchao.quantization.quantize_.workflows.int8.int8_tensor import QuantizeTensorToInt8Kwargs

        # The activation recipe of Int8DynamicActivationInt8WeightConfig's default: symmetric, per row (token).
        act = QuantizeTensorToInt8Kwargs(granularity=PerRow()) if name == "w8a8" else None
        qdata = tensors["weight.qdata"]  # (out, in) int8
        weight = Int8Tensor(qdata, tensors["weight.scale"], block_size=[1, qdata.shape[1]], dtype=torch.float32,
                            act_quant_kwargs=act)
        linear.weight = nn.Parameter(weight, requires_grad=False)
        if "bias" in tensors:
            linear.bias = nn.Parameter(tensors["bias"], requires_grad=False)
        return linear

    return restore


_TORCHAO = {name: Scheme("torchao", name, 8, _torchao_quantize(name), _torchao_tensors, _torchao_restore(name))
            for name in SCHEMES["torchao"]}


# ------------------------------------------------------------------------------------------------ bitsandbytes
def _bnb():
    with warnings.catch_warnings():  # its CPU build warns that an optional 4-bit kernel package is missing
        warnings.simplefilter("ignore")
        import bitsandbytes

    return bitsandbytes


def _bnb_empty(name: str, linear: nn.Linear) -> nn.Module:
    bnb, bias = _bnb(), linear.bias is not None
    if name == "int8":
        # threshold=0: pure int8 (LLM.int8's fp16 outlier columns would put float matmuls back in)
        return bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=bias, has_fp16_weights=False,
                                   threshold=0.0)
    return bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=bias, compute_dtype=torch.float32,
                             quant_type="nf4", quant_storage=torch.uint8)


NF4_BLOCK = 64  # bitsandbytes' default 4-bit block; its CPU kernel needs whole blocks per weight row


def _bnb_quantize(name: str) -> Callable[[nn.Linear], nn.Module]:
    def quantize(linear: nn.Linear) -> nn.Module:
        if name == "nf4" and linear.in_features % NF4_BLOCK:
            raise ValueError(f"quant.scheme=nf4 needs layers whose in_features are a multiple of {NF4_BLOCK}; "
                             f"a layout layer has {linear.in_features} (drop it from layout.quantize)")
        layer = _bnb_empty(name, linear)
        layer.load_state_dict(linear.state_dict())
        return layer.to(linear.weight.device)  # bitsandbytes quantizes when the float weight moves to a device

    return quantize


def _bnb_tensors(layer: nn.Module) -> dict[str, Tensor]:
    # int8: weight (int8), SCB (row scales), weight_format; nf4: packed weight (uint8) + weight.* quant state
    return {k: v.detach() for k, v in layer.state_dict().items()}


def _bnb_restore(name: str) -> Callable[[nn.Linear, dict[str, Tensor]], nn.Module]:
    def restore(linear: nn.Linear, tensors: dict[str, Tensor]) -> nn.Module:
        bnb = _bnb()
        layer = _bnb_empty(name, linear)
        device = tensors["weight"].device
        if name == "int8":
            cb = tensors["weight"]
            layer.weight = bnb.nn.Int8Params(cb, requires_grad=False, has_fp16_weights=False, CB=cb,
                                             SCB=tensors["SCB"])
        else:
            stats = {k.removeprefix("weight."): v for k, v in tensors.items() if k.startswith("weight.")}
            layer.weight = bnb.nn.Params4bit.from_prequantized(tensors["weight"], stats, requires_grad=False,
                                                               device=device)
        if "bias" in tensors:
            layer.bias = nn.Parameter(tensors["bias"], requires_grad=False)
        return layer

    return restore


_BITSANDBYTES = {name: Scheme("bitsandbytes", name, 8 if name == "int8" else 4, _bnb_quantize(name), _bnb_tensors,
                              _bnb_restore(name)) for name in SCHEMES["bitsandbytes"]}


def tensor_bytes(tensors: dict[str, Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())
