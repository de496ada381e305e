"""Trainers: distillation losses and the KD trainer (thin TRL subclasses)."""
