"""`crawl2clip remove` as Beam transforms: find the listed rows, write the plan (the audit), then
rewrite every unit of the run with the plan as a side input.

    scan sources -> FindListedRows -> one row per uid (FirstMatch) -> WritePlan
    units -> RewriteUnit (the plan as a side input: it starts once the plan is written)

A plan an earlier, interrupted attempt wrote is used as it is: its rows may already be gone from
the files, so scanning again would miss them.

A source that cannot be read is counted and recorded (the `unreadable` table), and the others are
still searched; but then no plan is written and nothing is rewritten. A listed pair's rows are in
several stages' files, so a plan made without one file could leave that pair's rows elsewhere,
and a plan once written is final.
"""

import apache_beam as beam
import pyarrow as pa

from crawl2clip.transforms import files
from crawl2clip.transforms.consent.blocklists import BlocklistSettings, ListSpec, counter_name, load_blocklists
from crawl2clip.transforms.errors import ERRORS, count_error, counter, error_record
from crawl2clip.transforms.remove.find import (
    STAGE,
    Unreadable,
    first_match,
    listed_images,
    listed_rows,
    read_plan_uids,
    write_plan,
)
from crawl2clip.transforms.remove.rewrite import Unit, apply_unit
from crawl2clip.transforms.schema import ERROR_SCHEMA, UID
from crawl2clip.transforms.tables import read_table, write_table


class _FindListedRows(beam.DoFn):
    def __init__(self, settings: BlocklistSettings):
        self.settings = settings

    def setup(self):
        self._lists = load_blocklists(self.settings)

    def process(self, source: tuple):
        kind, *paths = source
        try:
            found = listed_rows(*paths, self._lists) if kind == "rows" else listed_images(*paths, self._lists)
        except Unreadable as exc:
            yield beam.pvalue.TaggedOutput(ERRORS, error_record(STAGE, "unreadable", source=exc.path, detail=str(exc)))
            return
        yield from found


def _count_plan(path: str) -> str:
    for reason in read_table(path, columns=["reason"]).column("reason").to_pylist():
        counter(STAGE, counter_name(reason)).inc()
    return path


def _write_counted_plan(rows: list[dict], path: str, unreadable: list[dict], unreadable_path: str) -> str | None:
    """The plan, or (when a source could not be read) no plan and the table of what was not."""
    if unreadable:
        # A shard's parquet is read for its rows and for its images' pHashes: one record per file.
        by_file = {record["source"]: record for record in sorted(unreadable, key=lambda r: r["detail"])}
        for record in by_file.values():
            count_error(record)
        write_table(unreadable_path, pa.Table.from_pylist([by_file[k] for k in sorted(by_file)], schema=ERROR_SCHEMA))
        return None
    for row in rows:
        counter(STAGE, counter_name(row["reason"])).inc()
    return write_plan(path, rows)


class _RewriteUnit(beam.DoFn):
    def __init__(self, settings: BlocklistSettings, work: str):
        self.settings = settings
        self.work = work

    def setup(self):
        self._lists = load_blocklists(self.settings)
        self._removed: dict[str, frozenset] = {}

    def process(self, unit: Unit, plan: str | None):
        if plan is None:  # a source could not be searched: nothing is rewritten
            return
        if plan not in self._removed:  # read once per worker, once the plan exists
            self._removed[plan] = read_plan_uids(plan)
        yield unit.name, apply_unit(unit, self._removed[plan], self._lists, self.work)


class RemoveListedRows(beam.PTransform):
    """`scan`: ("rows", parquet path) and ("images", tar path, parquet path) sources to search;
    `units`: what to rewrite; `plan_path`: the audit file; `work`: staging and done markers;
    `unreadable_path`: where the sources that could not be read are recorded (then nothing is
    rewritten). Outputs (unit name, what it removed)."""

    def __init__(self, scan: list[tuple], units: list[Unit], plan_path: str, work: str, settings: BlocklistSettings,
                 unreadable_path: str):
        super().__init__()
        self.scan = scan
        self.units = units
        self.plan_path = plan_path
        self.work = work
        self.settings = settings
        self.unreadable_path = unreadable_path

    def expand(self, pbegin):
        if files.exists(self.plan_path):
            plan = (pbegin
                    | "PlanOfAnEarlierAttempt" >> beam.Create([self.plan_path])
                    | "CountPlan" >> beam.Map(_count_plan))
        else:
            order = {ListSpec.parse(spec).path: i for i, spec in enumerate(self.settings.specs)}
            found = (pbegin
                     | "ScanSources" >> beam.Create(self.scan)
                     | "SpreadSources" >> beam.Reshuffle()
                     | "FindListedRows" >> beam.ParDo(_FindListedRows(self.settings)).with_outputs(ERRORS, main="rows"))
            unreadable = found[ERRORS] | "AllUnreadable" >> beam.combiners.ToList()
            plan = (found.rows
                    | "ByUid" >> beam.Map(lambda row: (row[UID], row))
                    | "FirstMatch" >> beam.CombinePerKey(lambda rows: first_match(list(rows), order))
                    | "Rows" >> beam.Values()
                    | "AllListed" >> beam.combiners.ToList()
                    | "WritePlan" >> beam.Map(_write_counted_plan, self.plan_path, beam.pvalue.AsSingleton(unreadable),
                                              self.unreadable_path))
        return (pbegin
                | "Units" >> beam.Create(self.units)
                | "SpreadUnits" >> beam.Reshuffle()
                | "RewriteUnit" >> beam.ParDo(_RewriteUnit(self.settings, self.work), beam.pvalue.AsSingleton(plan)))
