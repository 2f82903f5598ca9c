"""The index stage: a faiss kNN index over the scoring stage's embeddings, and what the explorer
needs beside it (memory-mapped metadata, embeddings, thumbnails), all inside one INDEX_DIR.

`choice` picks the index type from the data size and a memory budget, `build` trains it on a
sample, adds vectors in streaming batches and measures recall, `store` is the INDEX_DIR layout
and its reader, `search` answers queries (filters, exact re-ranking, near-duplicate removal),
`thumbnails` packs the images the page shows, `transform` is the Beam stage.
"""
