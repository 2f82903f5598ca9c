"""The scoring stage as Beam transforms; the unit of work is one download shard.

    ScoreShards: shard numbers -> ReadDownloadShards -> ScoreWithClip -> [DetectWatermarks]
                 -> TagContent -> FilterBySimilarity -> WriteScoredShards (part N, dropped_N,
                 errors_N, counters_N) -> each written shard's counts

ScoreWithClip groups consecutive shards (up to a few batches of rows) so the model's batches
run across shard boundaries; what leaves it is one ScoredShard per download shard again.
"""

from dataclasses import dataclass

import apache_beam as beam
from apache_beam.ml.inference.base import RunInference

from crawl2clip.models.clip import ClipSpec
from crawl2clip.models.mclip import MClipSpec
from crawl2clip.transforms.errors import counter
from crawl2clip.transforms.score.content import IMAGE_MODEL, TagSource
from crawl2clip.transforms.score.counts import count
from crawl2clip.transforms.score.filters import filter_shard
from crawl2clip.transforms.score.handlers import ClipHandler, ContentHandler, WatermarkHandler
from crawl2clip.transforms.score.scoring import ScoredShard, ShardGroup
from crawl2clip.transforms.score.settings import WATERMARK, BatchSizes, Thresholds
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
        yield read_shard(self.download_dir, number)


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
    def __init__(self, output_dir: str, watermark_model: bool):
        self.output_dir = output_dir
        self.watermark_model = watermark_model

    def process(self, shard: ScoredShard):
        counts = write_scored_shard(self.output_dir, shard, self.watermark_model)
        count(counts)
        yield shard.number, counts


class WriteScoredShards(beam.PTransform):
    """Writes each shard's part (kept pairs), dropped pairs, errors and counters, and adds them to
    the stage's counters; yields (shard number, its counters). `watermark_model`: the shards went
    through DetectWatermarks."""

    def __init__(self, output_dir: str, watermark_model: bool = False):
        super().__init__()
        self.output_dir = output_dir
        self.watermark_model = watermark_model

    def expand(self, shards):
        return shards | "WriteShard" >> beam.ParDo(_WriteShard(self.output_dir, self.watermark_model))


@dataclass(frozen=True)
class ScoringSetup:
    """The models and settings of one scoring run, checked before it starts (pipelines/score.py):
    the one image tower, each route's text tower (None: the CLIP's own), each content tag's
    source, the toxicity model (None: the lexicon), the drop thresholds and the batch sizes."""
    image: ClipSpec
    texts: dict[str, MClipSpec | None]
    sources: dict[str, TagSource]
    toxicity_model: str | None
    thresholds: Thresholds
    sizes: BatchSizes = BatchSizes()

    @property
    def watermark_model(self) -> str | None:
        """LAION's watermark detector (on pixels), when it gives pwatermark."""
        source = self.sources.get(WATERMARK)
        return source.path if source is not None and source.kind == IMAGE_MODEL else None


class ScoreShards(beam.PTransform):
    """The scoring stage: download shard numbers of `download_dir` -> a part per shard in
    `output_dir` (shards scored there earlier are skipped) -> (shard number, its counters) per
    shard written, for a later step to wait on."""

    def __init__(self, download_dir: str, output_dir: str, setup: ScoringSetup):
        super().__init__()
        self.download_dir = download_dir
        self.output_dir = output_dir
        self.setup = setup

    def expand(self, numbers):
        setup, watermark = self.setup, self.setup.watermark_model
        scored = (numbers
                  | "ReadDownloadShards" >> ReadDownloadShards(self.download_dir, self.output_dir)
                  | "ScoreWithClip" >> ScoreWithClip(setup.image, setup.texts, setup.sizes,
                                                     keep_images=watermark is not None))
        if watermark is not None:
            scored = scored | "DetectWatermarks" >> DetectWatermarks(watermark, setup.image.device,
                                                                     setup.image.precision, setup.sizes)
        return (scored
                | "TagContent" >> TagContent(setup.image, setup.sources, setup.toxicity_model)
                | "FilterBySimilarity" >> FilterBySimilarity(setup.thresholds)
                | "WriteScoredShards" >> WriteScoredShards(self.output_dir, watermark is not None))
