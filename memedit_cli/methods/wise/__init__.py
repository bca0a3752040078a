"""WISE (Wang et al., arXiv 2405.14768): lifelong editing in a routed side memory."""

from memedit_cli.methods.wise.wise_main import WISE

__all__ = ["WISE"]
