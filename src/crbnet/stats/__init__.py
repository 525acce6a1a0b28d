"""Statistics: Cramér–Rao bounds, the noise model, and subspace (low-rank) bases."""
