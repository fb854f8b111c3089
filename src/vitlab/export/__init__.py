"""Export: ONNX files and torch.export programs of any registered model, checked against PyTorch,
and dynamic INT8 quantisation of the linear layers.

    from vitlab.export import export_onnx, save_program, quantize_int8
    result = export_onnx(model, "model.onnx", dynamic=True)   # verified with onnxruntime
    print(result.describe())

`STATIC_SHAPES` lists the families whose graphs keep a fixed height and width, with the reason.
"""

from vitlab.export.command import register_export_command
from vitlab.export.core import NO_ONNX, STATIC_ALL, STATIC_SHAPES, ExportError, ExportResult, dynamic_limit, onnx_limit
from vitlab.export.int8 import int8_agreement, quantize_int8, quantize_onnx_int8
from vitlab.export.program import export_program, save_program
from vitlab.export.to_onnx import export_onnx

__all__ = [
    "NO_ONNX", "STATIC_ALL", "STATIC_SHAPES", "ExportError", "ExportResult", "dynamic_limit", "export_onnx",
    "export_program", "onnx_limit",
    "int8_agreement", "quantize_int8", "quantize_onnx_int8", "register_export_command", "save_program",
]  # fmt: skip
