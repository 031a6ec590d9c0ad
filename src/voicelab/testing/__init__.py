"""Shipped test helpers: generated speech corpus, registry Whisper model, tiny ONNX stand-ins."""
