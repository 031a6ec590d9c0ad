"""``voicelab serve``: exported voices as a local OpenAI-compatible speech service.

- :mod:`voicelab.serve.voices`: which voices, grouped by base model (JSON only);
- :mod:`voicelab.serve.engine`: one loaded model per base, one synthesis at a time, a bounded
  queue, cancellation;
- :mod:`voicelab.serve.encode`: wav, mp3, opus, flac and pcm answers;
- :mod:`voicelab.serve.server`: voices, engines, limits and metrics of one server;
- :mod:`voicelab.serve.checks`: request fields and errors in OpenAI's shape;
- :mod:`voicelab.serve.speech`: answering a speech request (waiting, streaming, cancelling);
- :mod:`voicelab.serve.app`: the FastAPI routes;
- :mod:`voicelab.serve.run`: checks (address, key) and the uvicorn server.

Needs the ``serve`` extra (fastapi, uvicorn, prometheus-client); speaking also needs ``train``.
"""
