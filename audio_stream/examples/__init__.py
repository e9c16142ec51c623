"""Example WebSocket servers for audio_stream (run with `python -m audio_stream.examples.<name>`)."""
