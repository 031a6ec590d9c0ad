"""``voicelab say``: speak text in the voice with upstream's ``CosyVoice3`` (loaded once).

What the model is made of, in order of precedence (:func:`resolve_weights`):

1. ``--llm-ckpt PATH`` / ``--flow-ckpt PATH``: a training checkpoint loaded over the voice;
2. ``--epoch N``: ``exp/<spk>_sft/llm/torch_ddp/epoch_N_whole.pt`` over the voice;
3. the epoch locked in ``voicelab.toml`` (``voicelab checkpoints lock``), when its file exists;
4. the exported voice as it is (``pretrained_models/Fun-CosyVoice3-0.5B-<spk>-sft``).

Checkpoints are hot-loaded: upstream's ``epoch``/``step`` entries are dropped and the rest is
loaded strictly into ``model.llm`` / ``model.flow``, as the notes' test tool did, so an epoch can
be heard without exporting it. Text rules (instruct, normalization, splitting) are in
:mod:`voicelab.blocks.tts_text`; import-time traps of upstream in
:mod:`voicelab.upstream.inference_fixes`.

The package, by job: ``weights`` (which weights speak), ``voice_dir`` (the model dir and its
speakers), ``synthesizer``, ``wavs`` (writing audio) and ``say`` (``voicelab say``). This
module re-exports the names other packages use.
"""

from voicelab.stages.synth.say import (
    SayOptions,
    SayResult,
    VoiceChoice,
    check_options,
    default_out,
    describe,
    load_synthesizer,
    run_say,
    voice_instruct,
)
from voicelab.stages.synth.synthesizer import Spoken, Synthesizer, set_seed
from voicelab.stages.synth.voice_dir import (
    BASE_FILES,
    EMBEDDING_SHAPE,
    PROVENANCE,
    SAMPLE_RATE,
    check_model_dir,
    choose_speaker,
    read_speakers,
    resolve_model_dir,
)
from voicelab.stages.synth.wavs import StreamingWav, join_audio, join_path, output_paths, write_wav
from voicelab.stages.synth.weights import (
    Weights,
    epoch_checkpoint,
    epochs_on_disk,
    exported_llm_files,
    resolve_weights,
)

__all__ = [
    "BASE_FILES", "EMBEDDING_SHAPE", "PROVENANCE", "SAMPLE_RATE", "SayOptions", "SayResult",
    "Spoken", "StreamingWav", "Synthesizer", "VoiceChoice", "Weights", "check_model_dir",
    "check_options", "choose_speaker", "default_out", "describe", "epoch_checkpoint",
    "epochs_on_disk", "exported_llm_files", "join_audio", "join_path", "load_synthesizer",
    "output_paths", "read_speakers", "resolve_model_dir", "resolve_weights", "run_say", "set_seed",
    "voice_instruct", "write_wav",
]  # fmt: skip
