"""Larimar (Das et al., arXiv 2403.11901): one-shot episodic memory with exact forgetting."""

from memedit_cli.methods.larimar.larimar_main import Larimar

__all__ = ["Larimar"]
