"""advguard: adversarially defended image classifiers served with an attack-detection guard.

The libraries are `training` (torch) and `serving` (no torch); this package holds the command
line (`advguard.cli`), which imports them lazily and which they never import.
"""
