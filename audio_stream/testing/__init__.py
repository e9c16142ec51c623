"""Test tooling: the switch-core simulator (fssim.c), its driver, a stand-in `freeswitch` module.
Used by the tests and the demo; never loaded inside FreeSWITCH."""
