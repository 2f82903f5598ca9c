"""crawl2clip's stages as Beam YAML transforms (a `type: python` provider).

Templates in deploy/templates/ list them under `providers:`, so both `crawl2clip run --template`
and Beam's own `python -m apache_beam.yaml.main` can build the pipeline. Config keys are the
option names of `Crawl2ClipOptions` (tests/test_templates.py holds them together). Rows crossing
YAML transforms carry schemas (`CandidateRow`, `ErrorRow`), so Beam's own YAML transforms
(Filter, MapToFields, Sql, ...) can work on them.
"""

import os

import apache_beam as beam

from crawl2clip.transforms.errors import WriteErrors as _WriteErrorParquet
from crawl2clip.transforms.extract.rules import ExtractionRules
from crawl2clip.transforms.extract.transform import ExtractCandidates as _ExtractCandidates
from crawl2clip.transforms.httpfs import expand_path_listing
from crawl2clip.transforms.language import DEFAULT_THRESHOLD, NoLanguage
from crawl2clip.transforms.language import IdentifyLanguage as _IdentifyLanguage
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
                os.path.join(self.output, "pairs", "pairs"), CANDIDATE_SCHEMA, file_name_suffix=".parquet")
        )


class WriteErrors(beam.PTransform):
    """Error rows to `output/errors/errors-*.parquet`."""

    def __init__(self, output: str):
        super().__init__()
        self.output = output

    def expand(self, rows):
        return rows | "AsDicts" >> beam.Map(lambda row: row._asdict()) | _WriteErrorParquet(self.output)
