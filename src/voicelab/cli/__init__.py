"""The ``voicelab`` command line: thin click commands over the library's stage functions."""
