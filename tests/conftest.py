"""Shared test setup: headless matplotlib, deterministic torch, small thread pools."""

from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import torch

torch.set_num_threads(min(2, torch.get_num_threads()))
