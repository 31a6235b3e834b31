"""Benchmark evaluation.

model         load_embedder / Embedder (onnx, torchscript, pixels), Sidecar, export_torchscript
verification  the 10-fold LFW-style protocol (accuracy, thresholds, VAL@FAR, ROC)
stage         the evaluate stage body (run_evaluate): metrics/*.json, plots/*.csv
ijb, megaface, ytf, roc   the large benchmarks and their ROC rules
"""
