"""Deployment: ONNX export wrappers (``wrappers``), exporter extensions (``onnx_ops``) and the ONNX Runtime
session / runner used by the tests and the latency benchmark (``runtime``). CLI: ``python -m hpe_bench.export``.
"""
