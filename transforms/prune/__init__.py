"""SemDeDup and Density-Based Pruning (DBP) of an embeddings layout: which pairs to keep."""
