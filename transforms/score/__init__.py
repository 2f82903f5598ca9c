"""The CLIP scoring stage: download shards in, LAION-schema metadata and clip-retrieval embeddings out.

`settings` names and options, `shards` reads a download folder, `images` decodes on the CPU, `pixels` is open_clip's
preprocessing as tensor operations, `gpu_prepare` decodes and prepares batches on a GPU, `preparation` prepares batches
ahead of the model, `scoring` embeds groups of shards as one stream of batches, `handlers` are the Beam ModelHandlers
(CLIP, content tags), `filters` decides what is dropped, `counts` counts each shard (a part keeps its counters), `write`
writes one part per download shard (and defines the stage's layout beside the parts), `describe`
checks a run's setup and says what scoring.json records, `transform` strings them together as
PTransforms (the stage: `ScoreShards`).
"""
