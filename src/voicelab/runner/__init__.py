"""The runner: the stage graph of ``voicelab run``, skip/redo and state (``pipeline``), the
report built from what the stages wrote, and ``voicelab demo``."""
