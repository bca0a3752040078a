"""memedit: git for model edits. Apply, forget, check out and export knowledge edits."""

__version__ = "0.1.0"
FORMAT_VERSION = 1
