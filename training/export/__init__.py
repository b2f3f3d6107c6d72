"""Exporters: ONNX files and versioned bundles (and the TorchServe .mar, later)."""
from training.export.bundle_export import export_bundle
from training.export.onnx_export import export_onnx, onnx_parity

__all__ = ["export_bundle", "export_onnx", "onnx_parity"]
