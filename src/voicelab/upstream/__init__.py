"""The only code that knows upstream CosyVoice internals: YAML keys, train.py flags, fixes."""
