"""The report every training script prints and, with --report, keeps (bench/results/*.json)."""

import json
import os


def publish_report(report: dict, path: str | None) -> dict:
    """Adds the machine's load (training speed depends on it), prints the report, and writes it
    to `path` when one is given. Returns the report as published."""
    report = {**report, "loadavg": list(os.getloadavg())}
    print(json.dumps(report, indent=2))
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(report, f, indent=2)
    return report
