"""Dynamic INT8 quantisation of the linear layers, in PyTorch and in ONNX files.

Dynamic quantisation stores the weights of `nn.Linear` layers as int8 (per tensor, symmetric
range) and quantises their inputs on the fly, per batch; everything else (attention products,
convolutions, normalisation) stays float32. docs/export.md records what it changes and gains.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
from torch import nn


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy of `model` (in eval mode) whose `nn.Linear` layers compute in int8 (dynamic quantisation).

    Uses `torch.ao.quantization.quantize_dynamic`, which torch 2.13 still runs on CPU but marks as
    deprecated (its successor is the torchao package); its warnings are silenced here.
    """
    from torch.ao.quantization import quantize_dynamic

    model = copy.deepcopy(model).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)


def quantize_onnx_int8(source: str | Path, target: str | Path) -> Path:
    """Write `target`: the ONNX file `source` with the weight products of its linear layers (MatMul and
    Gemm with a constant weight) in int8, by onnxruntime's `quantize_dynamic`."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target = Path(target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_dynamic(
            str(source), str(target), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"],
            extra_options={"MatMulConstBOnly": True},
        )  # fmt: skip
    return target


def int8_agreement(model: nn.Module, quantized: nn.Module | None = None, *, onnx_path: str | Path | None = None,
                   inputs: torch.Tensor) -> tuple[float, float]:  # fmt: skip
    """(top-1 agreement, max relative error of the logits) of an INT8 version against `model` on `inputs`.

    The INT8 version is `quantized` (a PyTorch model) or the ONNX file `onnx_path`.
    """
    with torch.no_grad():
        reference = model.eval()(inputs)
        if onnx_path is not None:
            import onnxruntime

            session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
            logits = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: inputs.numpy()})[0])
        else:
            logits = quantized(inputs)
    agree = (logits.argmax(-1) == reference.argmax(-1)).float().mean().item()
    error = ((logits - reference).abs().max() / reference.abs().max()).item()
    return agree, error
