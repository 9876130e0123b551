"""The chaos scenario of `bench/chaos.py`, short: a few kill cycles in `make test`, with
bulk delivery (the default: answered after the writes) and without it (events of known
tasks acknowledged ahead of the writes, ACK_AHEAD).

Two replicas, each behind its own dev sidecar with many concurrent deliveries, so their
orders differ; bursts of events published right around each SIGKILL/SIGTERM; every client
resumes on the survivor. No owed update may be lost without a `resync_required`, and no
update may reach an application twice. (Definitions in `bench/chaos.py`.)
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import pytest

from bench.chaos import ARTIFACTS, Chaos, ChaosConfig

SHORT = ChaosConfig(
    replicas=2, users=4, tasks=6, cycles=6, burst=200, concurrency=64, seed=11, settle_s=20
)


@pytest.mark.parametrize("bulk", [True, False], ids=["bulk", "acked-ahead"])
async def test_no_silent_gap_and_no_duplicate_when_replicas_die_mid_stream(bulk: bool) -> None:
    config = replace(SHORT, bulk=bulk, log_dir=SHORT.log_dir.with_name(f"chaos-bulk-{bulk}"))
    report = await Chaos(config).run()
    text = json.dumps(asdict(report), indent=1, sort_keys=True)
    print(f"\nchaos (short, bulk={bulk}): {text}")
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"chaos-short-bulk-{bulk}.json").write_text(text + "\n", encoding="utf-8")
    assert report.cycles == SHORT.cycles
    if not bulk:
        assert report.acked_ahead > 0  # the path a crash can cost was taken
    assert report.owed > 0
    assert report.silent_gaps == 0, report.gap_examples
    assert report.duplicates == 0
    assert report.shown + report.silent_gaps <= report.owed
