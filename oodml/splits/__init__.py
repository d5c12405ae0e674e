"""Split ladders: Fréchet distance, greedy class-swap generator, k-shot episodes, ooDML import (SPEC §3)."""
