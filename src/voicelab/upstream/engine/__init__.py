"""VoiceLab's own training engine for upstream's CosyVoice 3 models (``--trainer voicelab``).

Upstream's model classes are built from the run's YAML and trained unmodified; what is ours is
everything around their submodules: a once-per-dataset cache (:mod:`.data`), token-budget
batches (:mod:`.batching`), the LLM and flow objectives built vectorized (:mod:`.llm_loss`,
:mod:`.flow_loss`), the loop (:mod:`.loop`) and asynchronous checkpoints (:mod:`.checkpoint`).
``python -m voicelab.upstream.engine`` is what torchrun starts (see :mod:`.__main__`).

:mod:`.batching` and :mod:`.checkpoint`'s file rules import neither torch nor cosyvoice, so
CI tests them without the vendor.
"""
