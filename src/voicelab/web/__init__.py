"""``voicelab ui``: the local web page for the whole workflow (FastAPI app, jobs, static page)."""
