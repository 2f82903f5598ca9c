"""Model loading and inference (no Beam, nothing of ours imported)."""
