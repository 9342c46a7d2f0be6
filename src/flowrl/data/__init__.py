"""Prompt data sets: the synthetic shapes world and prompt files."""
