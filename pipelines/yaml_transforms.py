"""crawl2clip's stages as Beam YAML transforms (a `type: python` provider).

Templates in deploy/templates/ list them under `providers:`, so both `crawl2clip run --template`
and Beam's own `python -m apache_beam.yaml.main` can build the pipeline. Config keys are the
option names of `Crawl2ClipOptions` (tests/test_templates.py holds them together), with the
stage commands' defaults and checks; `output` (and `input` for score and prune) name the stage's
folders. Rows crossing YAML transforms carry schemas (`CandidateRow`, `ErrorRow`), so Beam's own
YAML transforms (Filter, MapToFields, Sql, ...) can work on them.

Inside one pipeline the stages hand over through Beam, never by listing a folder: DownloadImages
emits its finished shard numbers, ScoreImages scores those, and PruneScored starts once a combine
over ScoreImages' output says the scoring is done.
"""

import difflib
import os

import apache_beam as beam

from crawl2clip.pipelines.config import config_to_flags
from crawl2clip.pipelines.flags import check_flags
from crawl2clip.pipelines.options import Crawl2ClipOptions
from crawl2clip.transforms import files
from crawl2clip.transforms.download.shards import stats_path
from crawl2clip.transforms.download.transform import DownloadImages as _DownloadImages
from crawl2clip.transforms.download.transform import CountShards, row_uid, shard_id_of
from crawl2clip.transforms.errors import WriteErrors as _WriteErrorParquet
from crawl2clip.transforms.extract.rules import ExtractionRules
from crawl2clip.transforms.extract.transform import ExtractCandidates as _ExtractCandidates
from crawl2clip.transforms.httpfs import expand_path_listing
from crawl2clip.transforms.language import DEFAULT_THRESHOLD, NoLanguage
from crawl2clip.transforms.language import IdentifyLanguage as _IdentifyLanguage
from crawl2clip.transforms.prune.single_machine import prune_single_machine
from crawl2clip.transforms.schema import CANDIDATE_SCHEMA, CandidateRow, ErrorRow

_RULES = ExtractionRules()


class ExtractCandidates(beam.PTransform):
    """Outputs `pairs` (CandidateRow) and `errors` (ErrorRow)."""

    _yaml_requires_inputs = False  # a root transform: Beam YAML reads this attribute

    def __init__(
        self,
        input: list[str] | str | None = None,  # noqa: A002  the option's name
        input_list: str | None = None,
        input_prefix: str = "https://data.commoncrawl.org/",
        min_alt_chars: int = _RULES.min_alt_chars,
        max_alt_chars: int = _RULES.max_alt_chars,
        max_host_chars: int = _RULES.max_host_chars,
        keep_svg_gif: bool = _RULES.keep_svg_gif,
        no_lazy_src: bool = not _RULES.lazy_src,
    ):  # the language options belong to IdentifyLanguage below
        super().__init__()
        patterns = [input] if isinstance(input, str) else list(input or [])
        if input_list:
            patterns += expand_path_listing(input_list, input_prefix)
        if not patterns:
            raise ValueError("ExtractCandidates needs `input` (paths or globs) or `input_list`")
        self.patterns = patterns
        self.rules = ExtractionRules(min_alt_chars, max_alt_chars, max_host_chars, keep_svg_gif, not no_lazy_src)

    def expand(self, pbegin):
        result = pbegin | "Extract" >> _ExtractCandidates(self.patterns, self.rules)
        return {
            "pairs": result["pairs"] | "PairRows" >> beam.Map(lambda d: CandidateRow(**d)).with_output_types(CandidateRow),
            "errors": result["errors"] | "ErrorRows" >> beam.Map(lambda d: ErrorRow(**d)).with_output_types(ErrorRow),
        }


class IdentifyLanguage(beam.PTransform):
    """CandidateRows in, CandidateRows with LANGUAGE, LANGUAGE_SCORE and split out."""

    def __init__(self, langid_model: str | None = None, langid_threshold: float = DEFAULT_THRESHOLD,
                 no_langid: bool = False):
        super().__init__()
        self.language = NoLanguage() if no_langid else _IdentifyLanguage(langid_model, langid_threshold)

    def expand(self, rows):
        return (
            rows
            | "AsDicts" >> beam.Map(lambda row: row._asdict())
            | "Language" >> self.language
            | "PairRows" >> beam.Map(lambda d: CandidateRow(**d)).with_output_types(CandidateRow)
        )


class WriteCandidates(beam.PTransform):
    """Candidate rows to `output/pairs/pairs-*.parquet`, exactly as `crawl2clip extract` writes them."""

    def __init__(self, output: str):
        super().__init__()
        self.output = output

    def expand(self, rows):
        return (
            rows
            | "AsDicts" >> beam.Map(lambda row: row._asdict())
            | "WritePairs" >> beam.io.WriteToParquet(
                files.join(self.output, "pairs", "pairs"), CANDIDATE_SCHEMA, file_name_suffix=".parquet")
        )


class WriteErrors(beam.PTransform):
    """Error rows to `output/errors/errors-*.parquet`."""

    def __init__(self, output: str):
        super().__init__()
        self.output = output

    def expand(self, rows):
        return rows | "AsDicts" >> beam.Map(lambda row: row._asdict()) | _WriteErrorParquet(self.output)


# The options each later stage's YAML transform takes as config keys (with dashes or underscores).
STAGE_OPTIONS = {
    "download": ("image_size", "resize_mode", "resize_only_if_bigger", "image_format", "image_quality",
                 "min_image_size", "min_image_bytes", "max_image_pixels", "shard_size", "proxy",
                 "allow_private_networks", "user_agent", "max_concurrency", "max_per_host", "download_timeout",
                 "download_retries", "blocklist", "phash_distance"),
    "score": ("clip_model", "clip_pretrained", "multi_text_model", "multi_clip_model", "multi_clip_pretrained",
              "tiny_clip", "clip_device", "clip_precision", "image_batch_size", "text_batch_size", "decode_workers",
              "min_similarity_en", "min_similarity_multi", "score_only", "unsafe_head", "watermark_model",
              "watermark_head", "aesthetic_head", "zero_shot_tags", "toxicity_model", "max_punsafe",
              "max_pwatermark", "max_ptoxic"),
    "prune": ("keep_fraction", "dedup_eps", "dedup_cluster_size", "prune_clusters", "prune_neighbours",
              "prune_temperature", "prune_balance", "prune_keep", "prune_seed", "kmeans_iterations",
              "kmeans_points_per_centroid"),
}


def _folder(path: str) -> str:
    """A local folder made absolute (workers may run elsewhere); other filesystems' URLs as they are."""
    return os.path.abspath(path) if files.is_local(path) else path


def stage_options(transform: str, stage: str, config: dict, **folders) -> Crawl2ClipOptions:
    """The stage's options from a YAML config, read as the stage command reads its flags (types,
    choices, defaults, checks); `folders` sets input and output. A key that is no option of the
    stage, or a bad value, is a ValueError naming it, raised while the pipeline is built."""
    known = STAGE_OPTIONS[stage]
    for key in config:
        name = str(key).replace("-", "_")
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ValueError(f"{transform}: {key!r} is not a {stage} option{hint}; config keys are the "
                             f"options of `crawl2clip {stage}`: {', '.join(known)}")
    flags = config_to_flags(config)
    try:
        check_flags(flags)
    except ValueError as exc:
        raise ValueError(f"{transform}: {exc}") from None
    options = Crawl2ClipOptions(flags, **folders)
    if problems := options.stage_settings_problems(stage):
        raise ValueError(f"{transform}: " + "; ".join(problems))
    return options


class DownloadImages(beam.PTransform):
    """Candidate rows -> `crawl2clip download`'s shards in `output`. Outputs `shards`: the numbers
    of the input's finished shards (those an earlier run into `output` finished too), once the
    whole download is done."""

    def __init__(self, output: str, **options):
        super().__init__()
        self.output = _folder(output)
        self.options = stage_options("DownloadImages", "download", options, output_dir=self.output)

    def expand(self, rows):
        output, shard_size, options = self.output, self.options.shard_size, self.options
        pairs = rows | "AsDicts" >> beam.Map(lambda row: row._asdict())
        shard_count = beam.pvalue.AsSingleton(pairs | "CountShards" >> CountShards(shard_size))
        written = pairs | "Download" >> _DownloadImages(output, shard_count, options.fetch_options(),
                                                        options.resize_spec(), CANDIDATE_SCHEMA,
                                                        options.blocklist_settings())
        done = beam.pvalue.AsSingleton(written | "WaitForDownload" >> beam.combiners.Count.Globally())
        shards = (pairs
                  | "ShardNumbers" >> beam.Map(lambda row, count: shard_id_of(row_uid(row), count), shard_count)
                  | "EachShardOnce" >> beam.Distinct()
                  | "Finished" >> beam.Filter(lambda shard, _: files.marker_exists(stats_path(output, shard)), done))
        return {"shards": shards}


class ScoreImages(beam.PTransform):
    """Download shard numbers (DownloadImages' `shards`) -> `crawl2clip score`'s output in
    `output`, reading the shards from the download folder `input`. Outputs one element per part
    written. The models and settings are checked, and scoring.json written, while building."""

    def __init__(self, input: str, output: str, **options):  # noqa: A002  the option's name
        super().__init__()
        self.download_dir, self.output = _folder(input), _folder(output)
        self.options = stage_options("ScoreImages", "score", options, input=[self.download_dir],
                                     output_dir=self.output)

    def expand(self, shard_numbers):
        from crawl2clip.pipelines.score import score_shards  # torch and open_clip: only templates that score

        return score_shards(shard_numbers, self.options, self.download_dir, self.output)


class PruneScored(beam.PTransform):
    """ScoreImages' output -> once it is complete, SemDeDup + DBP of the scoring folder `input` into
    `output` (`crawl2clip prune`'s files): the single-machine prune, one step on one worker with
    bounded memory, the same kept rows as the Beam prune. Outputs the prune's totals."""

    def __init__(self, input: str, output: str, **options):  # noqa: A002  the option's name
        super().__init__()
        self.score_dir, self.output = _folder(input), _folder(output)
        self.settings = stage_options("PruneScored", "prune", options, input=[self.score_dir],
                                      output_dir=self.output).prune_settings()

    def expand(self, scored_parts):
        score_dir, output, settings = self.score_dir, self.output, self.settings
        return (scored_parts
                | "WaitForScoring" >> beam.combiners.Count.Globally()
                | "SemDeDupAndPrune" >> beam.Map(lambda _: prune_single_machine(score_dir, output, settings)))
