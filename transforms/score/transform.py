"""The scoring stage as Beam transforms; the unit of work is one download shard.

    shard numbers -> ReadDownloadShards -> ScoreWithClip -> [DetectWatermarks] -> TagContent
                  -> FilterBySimilarity -> WriteScoredShards (part N, dropped_N, errors_N)

ScoreWithClip groups consecutive shards (up to a few batches of rows) so the model's batches
run across shard boundaries; what leaves it is one ScoredShard per download shard again.
"""

import apache_beam as beam
from apache_beam.ml.inference.base import RunInference

from crawl2clip.models.clip import ClipSpec
from crawl2clip.models.mclip import MClipSpec
from crawl2clip.transforms.errors import count_error, counter
from crawl2clip.transforms.score.content import TagSource
from crawl2clip.transforms.score.filters import filter_shard
from crawl2clip.transforms.score.handlers import ClipHandler, ContentHandler, WatermarkHandler
from crawl2clip.transforms.score.scoring import ScoredShard, ShardGroup
from crawl2clip.transforms.score.settings import BatchSizes, Thresholds
from crawl2clip.transforms.score.shards import STAGE, read_shard
from crawl2clip.transforms.score.write import is_scored, write_scored_shard


class _ReadShard(beam.DoFn):
    def __init__(self, download_dir: str, output_dir: str):
        self.download_dir = download_dir
        self.output_dir = output_dir

    def process(self, number: int):
        if is_scored(self.output_dir, number):
            counter(STAGE, "shards_already_scored").inc()
            return
        pairs = read_shard(self.download_dir, number)
        counter(STAGE, "pairs_read").inc(len(pairs))
        for record in pairs.errors:
            count_error(record)
        yield pairs


class ReadDownloadShards(beam.PTransform):
    """Download shard numbers -> ShardPairs (the successes and their image bytes); shards already
    scored into `output_dir` are skipped."""

    def __init__(self, download_dir: str, output_dir: str):
        super().__init__()
        self.download_dir = download_dir
        self.output_dir = output_dir

    def expand(self, numbers):
        return (numbers
                | "SpreadShards" >> beam.Reshuffle()
                | "ReadShard" >> beam.ParDo(_ReadShard(self.download_dir, self.output_dir)))


class ScoreWithClip(beam.PTransform):
    """ShardPairs -> ScoredShard: L2-normalised image and caption embeddings and their cosine
    similarity: every image through `image`'s image tower, each caption through its route's
    text tower in `texts` (None: the CLIP's own). `keep_images` keeps the images for a later
    step that reads pixels."""

    def __init__(self, image: ClipSpec, texts: dict[str, MClipSpec | None], sizes: BatchSizes = BatchSizes(),
                 keep_images: bool = False):
        super().__init__()
        self.rows = sizes.rows_per_call
        self.handler = ClipHandler(image, texts, sizes, keep_images)

    def expand(self, shards):
        # A fixed size (min = max) in rows: BatchElements' adaptive sizing would start at one shard.
        return (shards
                | "GroupShards" >> beam.BatchElements(min_batch_size=self.rows, max_batch_size=self.rows,
                                                      element_size_fn=len)
                | "ShardGroups" >> beam.Map(ShardGroup)
                | "RunClip" >> RunInference(self.handler.with_no_batching()))


class DetectWatermarks(beam.PTransform):
    """ScoredShard (with images) -> the same with pwatermark from LAION's watermark detector."""

    def __init__(self, path: str, device: str, precision: str, sizes: BatchSizes = BatchSizes()):
        super().__init__()
        self.handler = WatermarkHandler(path, device, precision, sizes)

    def expand(self, shards):
        return shards | "RunWatermarkDetector" >> RunInference(self.handler.with_no_batching())


class TagContent(beam.PTransform):
    """ScoredShard -> the same with punsafe, pwatermark, aesthetic (null where not computed) and ptoxic."""

    def __init__(self, image: ClipSpec, sources: dict[str, TagSource], toxicity_model: str | None):
        super().__init__()
        self.handler = ContentHandler(image, sources, toxicity_model)

    def expand(self, shards):
        return shards | "RunContentHeads" >> RunInference(self.handler.with_no_batching())


class FilterBySimilarity(beam.PTransform):
    """Marks the pairs to drop: under their split's similarity threshold, or over an optional
    content threshold; nothing with `score_only`."""

    def __init__(self, thresholds: Thresholds):
        super().__init__()
        self.thresholds = thresholds

    def expand(self, shards):
        return shards | "MarkDrops" >> beam.Map(filter_shard, self.thresholds)


class _WriteShard(beam.DoFn):
    def __init__(self, output_dir: str):
        self.output_dir = output_dir

    def process(self, shard: ScoredShard):
        counts = write_scored_shard(self.output_dir, shard)
        counter(STAGE, "shards_unreadable" if shard.read_failed else "shards").inc()
        yield {"shard": shard.number, **counts}


class WriteScoredShards(beam.PTransform):
    """Writes each shard's part (kept pairs), dropped pairs and errors; yields its counts."""

    def __init__(self, output_dir: str):
        super().__init__()
        self.output_dir = output_dir

    def expand(self, shards):
        return shards | "WriteShard" >> beam.ParDo(_WriteShard(self.output_dir))
