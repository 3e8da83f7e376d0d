"""The pure replay engine: no I/O, no clock, no randomness of its own.

History events and actions go in and out as typed values (:mod:`.history`,
:mod:`.actions`); :func:`.replay.run_episode` is the single entry point.
"""
