"""The built-in upstream simulator: a faithful fake of the OpenAI and Anthropic APIs, real-time and batch.
A separate app: may import nothing else of the router (the command starts it).
"""

from __future__ import annotations

from router.simulator.app import create_simulator
from router.simulator.config import SimConfig

__all__ = ["SimConfig", "create_simulator"]
