"""The stages of a voice: prepare, features, pack, train, export, audition (and synth, which
audition and the front ends speak with). Each stage module follows :mod:`voicelab.contract`:
its ``Options``, ``run(ws, opts) -> StageResult`` and a ``STAGE`` naming its inputs."""
