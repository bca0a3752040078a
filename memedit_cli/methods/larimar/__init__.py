"""Larimar (Das et al., arXiv 2403.11901): one-shot episodic memory. Work in progress: the
memory (memory.py) exists and is tested; the method plug-in, encoder, scope detector and
conditioning do not yet (issue 5)."""
