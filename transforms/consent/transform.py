"""Removal lists as a Beam step: rows whose image URL or page URL a list names leave the stage,
each as an audit row on the `removed` output (transforms/consent/audit.py)."""

import os

import apache_beam as beam

from crawl2clip.transforms.consent.audit import REMOVED, REMOVED_SCHEMA, audit_row
from crawl2clip.transforms.consent.blocklists import BlocklistSettings, load_blocklists
from crawl2clip.transforms.schema import PAGE_URL, URL


class DropListedRows(beam.DoFn):
    """Main output: the rows no URL or domain list names; `removed`: audit rows of the others."""

    def __init__(self, settings: BlocklistSettings, stage: str):
        self.settings = settings
        self.stage = stage

    def setup(self):
        self._lists = load_blocklists(self.settings)

    def process(self, row: dict):
        match = self._lists.match_url(row.get(URL), row.get(PAGE_URL))
        if match is None:
            yield row
        else:
            yield beam.pvalue.TaggedOutput(REMOVED, audit_row(row, match, self.stage))


class WriteRemoved(beam.PTransform):
    """Writes a stage's audit rows under `output_dir/removed/`."""

    def __init__(self, output_dir: str):
        super().__init__()
        self.output_dir = output_dir

    def expand(self, removed):
        return removed | "WriteRemovedParquet" >> beam.io.WriteToParquet(
            os.path.join(self.output_dir, REMOVED, REMOVED), REMOVED_SCHEMA, file_name_suffix=".parquet")
