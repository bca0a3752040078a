"""Canonical JSON: the one byte form that ids and hashes are computed over."""

import hashlib
import json


def canonical(obj) -> bytes:
    """Sorted keys, no whitespace, UTF-8, and no NaN/Infinity (they are not JSON)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def reject_constants(name: str):
    """json.loads hook: refuse NaN/Infinity, which Python would otherwise accept."""
    raise ValueError(f"{name} is not valid JSON")


def loads_strict(text):
    return json.loads(text, parse_constant=reject_constants)

