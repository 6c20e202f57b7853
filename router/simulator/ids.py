"""Provider-style random ids: `chatcmpl-…`, `file-…`, `batch_…`, `msgbatch_…`, `req_…`."""

from __future__ import annotations

import os


def new_id(prefix: str) -> str:
    """A fresh random id with the provider's prefix; 96 random bits, so ids never collide in practice."""
    return prefix + os.urandom(12).hex()
