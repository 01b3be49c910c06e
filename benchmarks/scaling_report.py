"""Compare a 1-GPU and an N-GPU run of the same study: images/hour, scaling efficiency, identical images.

    python benchmarks/scaling_report.py RUN_1GPU RUN_NGPU --gpus N [--wall1 S --wallN S] [--out result.json]

Steady-state throughput counts generation time only (rows' seconds per image x batch
size, summed per rank; the slowest rank sets the pace), so model building is excluded;
--wall* add the end-to-end command times, which include it.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from callbacks.writer import read_rows


def busy_seconds(run: Path) -> dict[str, float]:
    """Per rank: seconds spent generating (each row carries its batch's seconds per image)."""
    rows = read_rows(run / "results.jsonl")
    per_rank: dict[str, float] = defaultdict(float)
    for row in rows:
        per_rank[str(row.get("rank", 0))] += row["seconds"]
    return dict(per_rank)


def compare(one: Path, many: Path, gpus: int, wall_one: float | None, wall_many: float | None) -> dict:
    rows_one, rows_many = read_rows(one / "results.jsonl"), read_rows(many / "results.jsonl")
    ids_one = sorted(r["item_id"] for r in rows_one)
    ids_many = sorted(r["item_id"] for r in rows_many)
    identical = sum((one / r["image"]).read_bytes() == (many / r["image"]).read_bytes() for r in rows_one)
    busy_one, busy_many = busy_seconds(one), busy_seconds(many)
    ips_one = len(rows_one) / max(busy_one.values())
    ips_many = len(rows_many) / max(busy_many.values())
    result = {
        "gpus": gpus,
        "images": len(rows_one),
        "same_items": ids_one == ids_many,
        "identical_images": identical,
        "images_per_hour_1gpu": 3600 * ips_one,
        "images_per_hour_ngpu": 3600 * ips_many,
        "speedup": ips_many / ips_one,
        "efficiency": ips_many / ips_one / gpus,
        "busy_seconds_per_rank": busy_many,
    }
    if wall_one and wall_many:
        result.update(
            wall_seconds_1gpu=wall_one, wall_seconds_ngpu=wall_many,
            wall_speedup=wall_one / wall_many, wall_efficiency=wall_one / wall_many / gpus,
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_1gpu", type=Path)
    parser.add_argument("run_ngpu", type=Path)
    parser.add_argument("--gpus", type=int, required=True)
    parser.add_argument("--wall1", type=float)
    parser.add_argument("--wallN", type=float)
    parser.add_argument("--out", type=Path)
    options = parser.parse_args()
    result = compare(options.run_1gpu, options.run_ngpu, options.gpus, options.wall1, options.wallN)
    text = json.dumps(result, indent=2)
    print(text)
    if options.out:
        options.out.write_text(text)


if __name__ == "__main__":
    main()
