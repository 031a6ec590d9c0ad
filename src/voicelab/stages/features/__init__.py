"""``voicelab features``: speaker embeddings and speech tokens, as upstream's offline tools.

Replaces upstream's ``tools/extract_embedding.py`` and ``tools/extract_speech_token.py``. For each
of ``train`` and ``dev`` it writes beside the kaldi lists, with ``torch.save`` exactly as upstream:

- ``utt2embedding.pt``: ``{utt: [192 floats]}`` from ``campplus.onnx`` on CMN'd Kaldi fbank;
- ``spk2embedding.pt``: ``{spk: [192 floats]}``, the plain mean of the raw utterance vectors;
- ``utt2speech_token.pt``: ``{utt: [ints]}`` from ``speech_tokenizer_v3.onnx`` on Whisper log-mel.

The padding rule: each utterance is brought to 24 kHz, zero-padded to a multiple of 960 samples
(40 ms, one token) and only then resampled to 16 kHz, as upstream's online training path does
(``compute_fbank`` pads, ``compute_whisper_fbank`` resamples), with torchaudio's resampler
reimplemented in numpy (:func:`voicelab.blocks.fbank.resample`). A padded length ``P`` gives
``2P/3`` samples at 16 kHz, ``P/240`` log-mel frames and ``P/960`` tokens, while the flow's mel
has ``P/480`` frames: ``2 * tokens == mel frames`` for every utterance. Upstream's offline tool
tokenizes the unpadded audio and its tokens then break flow training by a frame or two.

Utterances over 30 s (the tokenizer's window) and unreadable or empty audio are excluded with a
reason; :mod:`voicelab.stages.pack` leaves them out of the shards and says so.

Work is cached per utterance, keyed by the audio's content hash and the two model files'
identities, in ``<dataset>/.features_cache.json``, saved atomically every few seconds: a rerun
recomputes only changed audio, and a killed run resumes where it stopped.

The package, by job: ``frontend`` (audio to what the models consume), ``encoders`` (the two ONNX
models), ``cache``, ``jobs`` (the worker threads), ``options``, ``build`` (``run_features``)
and ``stage`` (the stage contract). This module re-exports the names other packages use.
"""

from voicelab.stages.features.build import run_features
from voicelab.stages.features.cache import CACHE_NAME, FEATURES_VERSION, FeatureCache
from voicelab.stages.features.encoders import (
    CAMPPLUS,
    TOKENIZER,
    TOKENIZER_BATCH,
    Models,
    model_paths,
)
from voicelab.stages.features.frontend import (
    MAX_SECONDS,
    SPEECH_RATE,
    TOKEN_HOP,
    FrontEnd,
    front_end,
    load_audio,
    padded_length,
    to_16k_exact,
    to_24k_padded,
)
from voicelab.stages.features.jobs import one_blas_thread
from voicelab.stages.features.options import (
    EMBEDDING_FILE,
    NAME,
    SPK_EMBEDDING_FILE,
    SPLITS,
    TOKEN_FILE,
    Excluded,
    FeaturesOptions,
    FeaturesResult,
    SplitFeatures,
)
from voicelab.stages.features.stage import STAGE, Options

__all__ = [
    "CACHE_NAME", "CAMPPLUS", "EMBEDDING_FILE", "FEATURES_VERSION", "MAX_SECONDS", "NAME",
    "SPEECH_RATE", "SPK_EMBEDDING_FILE", "SPLITS", "STAGE", "TOKENIZER", "TOKENIZER_BATCH",
    "TOKEN_FILE", "TOKEN_HOP", "Excluded", "FeatureCache", "FeaturesOptions", "FeaturesResult",
    "FrontEnd", "Models", "Options", "SplitFeatures", "front_end", "load_audio", "model_paths",
    "one_blas_thread", "padded_length", "run_features", "to_16k_exact", "to_24k_padded",
]  # fmt: skip
