"""Fault kinds and the nemesis that fires them during a run."""
