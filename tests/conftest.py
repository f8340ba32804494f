"""Shared test setup: headless matplotlib before anything imports pyplot."""

import os

os.environ.setdefault("MPLBACKEND", "agg")
