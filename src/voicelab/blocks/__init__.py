"""Building blocks: audio I/O, VAD, ASR, text normalization, QC rules, fbank features, ONNX
Runtime sessions, kaldi lists and the dataset records. They know nothing of stages, the runner
or the front ends (tests/test_layers.py)."""
