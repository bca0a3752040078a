"""MEMIT: one small module per step, as in kmeng01/memit."""

from memedit_cli.methods.memit.memit_main import MEMIT

__all__ = ["MEMIT"]
