"""planbus: LLM engagement plans for leads, requested from a Telegram Mini App, run serverless."""

from __future__ import annotations

__version__ = "0.1.0"
