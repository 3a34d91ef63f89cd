"""Reliability: bad input, fuzzing, faults, security and load, each through a path a user drives."""
