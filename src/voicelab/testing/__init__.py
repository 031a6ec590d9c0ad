"""Shipped test helpers: generated speech corpus, the registry Whisper model, tiny ONNX stand-ins."""
