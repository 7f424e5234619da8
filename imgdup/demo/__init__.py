"""The shipped demo corpus (PDFs built from CC0 DSB2018 micrographs) and its generator."""

from pathlib import Path

DEMO_DIR = Path(__file__).parent
