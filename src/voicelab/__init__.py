"""VoiceLab: from a folder of one speaker's recordings to a fine-tuned CosyVoice 3 voice."""

__version__ = "0.1.0"
