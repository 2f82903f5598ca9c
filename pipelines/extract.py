"""The extract job: web archives -> deduplicated candidate pairs (parquet) + errors."""

import os

import apache_beam as beam

from crawl2clip.pipelines.options import Crawl2ClipOptions
from crawl2clip.transforms.consent.transform import WriteRemoved
from crawl2clip.transforms.errors import WriteErrors
from crawl2clip.transforms.extract.transform import ExtractCandidates
from crawl2clip.transforms.httpfs import expand_path_listing
from crawl2clip.transforms.language import IdentifyLanguage, NoLanguage
from crawl2clip.transforms.progress import PROGRESS_FOLDER
from crawl2clip.transforms.schema import CANDIDATE_SCHEMA


def input_patterns(options: Crawl2ClipOptions) -> list[str]:
    patterns = list(options.input or [])
    if options.input_list:
        patterns += expand_path_listing(options.input_list, options.input_prefix)
    return patterns


def build_extract(pipeline: beam.Pipeline, options: Crawl2ClipOptions) -> beam.PCollection:
    """Returns the names of the files written (pairs and errors), complete when the stage is."""
    progress_dir = os.path.join(options.output_dir, PROGRESS_FOLDER)
    result = pipeline | "Extract" >> ExtractCandidates(input_patterns(options), options.extraction_rules(),
                                                       progress_dir, options.ignore_page_optouts,
                                                       options.blocklist_settings())
    if options.no_langid:
        pairs = result["pairs"] | "NoLanguage" >> NoLanguage()
    else:
        pairs = result["pairs"] | "IdentifyLanguage" >> IdentifyLanguage(options.langid_model, options.langid_threshold)
    pair_files = pairs | "WritePairs" >> beam.io.WriteToParquet(
        os.path.join(options.output_dir, "pairs", "pairs"), CANDIDATE_SCHEMA, file_name_suffix=".parquet"
    )
    error_files = result["errors"] | "WriteErrors" >> WriteErrors(options.output_dir)
    written = [pair_files, error_files]
    if "removed" in result:  # removal lists given: their audit rows, extract/removed/*.parquet
        written.append(result["removed"] | "WriteRemoved" >> WriteRemoved(options.output_dir))
    return tuple(written) | "WrittenFiles" >> beam.Flatten()
