"""Split ladders: Fréchet distance, greedy class-swap generator, k-shot episodes, ooDML import (docs/formats.md)."""

from oodml.splits.episodes import sample_episodes
from oodml.splits.frechet import frechet_distance
from oodml.splits.generate import build_ladder, make_splits_command
from oodml.splits.importer import import_splits_command
from oodml.splits.spec import Level, SplitSpec

__all__ = ["Level", "SplitSpec", "build_ladder", "frechet_distance", "import_splits_command", "make_splits_command",
           "sample_episodes"]
