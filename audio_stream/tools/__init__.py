"""Operator tools: the command line (`python -m audio_stream …`), the installer, the status
check, and the small event-socket client they share. Nothing here runs inside FreeSWITCH."""
