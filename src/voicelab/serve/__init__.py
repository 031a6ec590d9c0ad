"""``voicelab serve``: exported voices as a local OpenAI-compatible speech service.

- :mod:`voicelab.serve.voices`: which voices, grouped by base model (JSON only);
- :mod:`voicelab.serve.engine`: one loaded model per base, one synthesis at a time, a bounded
  queue, cancellation;
- :mod:`voicelab.serve.encode`: wav, mp3, opus, flac and pcm answers;
- :mod:`voicelab.serve.app`: the FastAPI routes, errors in OpenAI's shape, metrics;
- :mod:`voicelab.serve.run`: checks (address, key) and the uvicorn server.

Needs the ``serve`` extra (fastapi, uvicorn, prometheus-client); speaking also needs ``train``.
"""
