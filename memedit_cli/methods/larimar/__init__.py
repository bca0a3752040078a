"""Larimar (Das et al., arXiv 2403.11901): one-shot episodic memory. Work in progress (issue 5):
the memory (memory.py), the episode encoders (encoder.py) and the scope detector (scope.py)
exist and are tested; the method plug-in, the conditioning of the decoder and the export do
not yet, so `--method larimar` is not offered."""
