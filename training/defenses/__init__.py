"""Defences: one module per defence, registered here explicitly."""
from training.defenses.base import Defense, DefenseConfig, create_defense, known_defenses, register_defense

__all__ = ["Defense", "DefenseConfig", "create_defense", "known_defenses", "register_defense"]
