"""`crawl2clip remove` as Beam transforms: find the listed rows, write the plan (the audit), then
rewrite every unit of the run with the plan as a side input.

    scan sources -> FindListedRows -> one row per uid (FirstMatch) -> WritePlan
    units -> RewriteUnit (the plan as a side input: it starts once the plan is written)

A plan an earlier, interrupted attempt wrote is used as it is: its rows may already be gone from
the files, so scanning again would miss them.
"""

import apache_beam as beam

from crawl2clip.transforms import files
from crawl2clip.transforms.consent.blocklists import BlocklistSettings, ListSpec, counter_name, load_blocklists
from crawl2clip.transforms.errors import counter
from crawl2clip.transforms.tables import read_table
from crawl2clip.transforms.remove.find import STAGE, first_match, listed_images, listed_rows, read_plan_uids, write_plan
from crawl2clip.transforms.remove.rewrite import Unit, apply_unit
from crawl2clip.transforms.schema import UID


class _FindListedRows(beam.DoFn):
    def __init__(self, settings: BlocklistSettings):
        self.settings = settings

    def setup(self):
        self._lists = load_blocklists(self.settings)

    def process(self, source: tuple):
        kind, *paths = source
        yield from (listed_rows(*paths, self._lists) if kind == "rows" else listed_images(*paths, self._lists))


def _count_plan(path: str) -> str:
    for reason in read_table(path, columns=["reason"]).column("reason").to_pylist():
        counter(STAGE, counter_name(reason)).inc()
    return path


def _write_counted_plan(rows: list[dict], path: str) -> str:
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

    def process(self, unit: Unit, plan: str):
        if plan not in self._removed:  # read once per worker, once the plan exists
            self._removed[plan] = read_plan_uids(plan)
        yield unit.name, apply_unit(unit, self._removed[plan], self._lists, self.work)


class RemoveListedRows(beam.PTransform):
    """`scan`: ("rows", parquet path) and ("images", tar path, parquet path) sources to search;
    `units`: what to rewrite; `plan_path`: the audit file; `work`: staging and done markers.
    Outputs (unit name, what it removed)."""

    def __init__(self, scan: list[tuple], units: list[Unit], plan_path: str, work: str, settings: BlocklistSettings):
        super().__init__()
        self.scan = scan
        self.units = units
        self.plan_path = plan_path
        self.work = work
        self.settings = settings

    def expand(self, pbegin):
        if files.exists(self.plan_path):
            plan = (pbegin
                    | "PlanOfAnEarlierAttempt" >> beam.Create([self.plan_path])
                    | "CountPlan" >> beam.Map(_count_plan))
        else:
            order = {ListSpec.parse(spec).path: i for i, spec in enumerate(self.settings.specs)}
            plan = (pbegin
                    | "ScanSources" >> beam.Create(self.scan)
                    | "SpreadSources" >> beam.Reshuffle()
                    | "FindListedRows" >> beam.ParDo(_FindListedRows(self.settings))
                    | "ByUid" >> beam.Map(lambda row: (row[UID], row))
                    | "FirstMatch" >> beam.CombinePerKey(lambda rows: first_match(list(rows), order))
                    | "Rows" >> beam.Values()
                    | "AllListed" >> beam.combiners.ToList()
                    | "WritePlan" >> beam.Map(_write_counted_plan, self.plan_path))
        return (pbegin
                | "Units" >> beam.Create(self.units)
                | "SpreadUnits" >> beam.Reshuffle()
                | "RewriteUnit" >> beam.ParDo(_RewriteUnit(self.settings, self.work), beam.pvalue.AsSingleton(plan)))
