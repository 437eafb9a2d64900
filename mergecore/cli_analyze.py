"""CLI command 'analyze' (registered into mergecore.cli)."""

from __future__ import annotations

from .cli import EXTRA_COMMANDS  # noqa: F401
