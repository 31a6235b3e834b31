"""Benchmark evaluation.

model         load_embedder / Embedder (onnx, torchscript, pixels), Sidecar, export_torchscript
verification  the 10-fold LFW-style protocol (accuracy, thresholds, VAL@FAR, ROC)
packs         verification .bin packs: decode, embed with the flip, verify (the stage: arcpipe.stages.evaluate)
loader        decode and align in a worker pool, batches for the model; embeddings: the saved .npz files
ijb, megaface, ytf, roc   the large benchmarks and their ROC rules
"""
