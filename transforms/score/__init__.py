"""The CLIP scoring stage: download shards in, LAION-schema metadata and clip-retrieval embeddings out.

`settings` names and options, `shards` reads a download folder, `images` decodes and preprocesses, `handlers` are the Beam
ModelHandlers (CLIP, content tags), `filters` decides what is dropped, `write` writes one part
per download shard, `transform` strings them together as PTransforms.
"""
