"""The audit log's refusals: one record each up to a burst per source, then aggregated."""

from __future__ import annotations

import json
from pathlib import Path

from kvmha.fence.audit import Audit, RefusalLog


def test_a_flood_of_refusals_is_aggregated(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    audit = Audit(str(log), "host1", use_syslog=False)
    r = RefusalLog(audit, burst=5, window=3600)
    for i in range(1000):
        r.add(peer="10.0.0.9", key=None, code="bad-hello" if i % 2 else "bad-frame", detail="x")
    r.add(peer="10.0.0.8", key=None, code="bad-auth", detail="y")
    r.flush()
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    single = [e for e in lines if e["code"] != "suppressed"]
    assert len(single) == 6  # five from the flooder, one from the other source
    (agg,) = [e for e in lines if e["code"] == "suppressed"]
    assert agg["peer"] == "10.0.0.9" and agg["count"] == 995
    assert agg["codes"] == {"bad-hello": 498, "bad-frame": 497}
    assert all(e["result"] == "refused" for e in lines)
    r.flush()  # nothing new: nothing written
    assert len(log.read_text().splitlines()) == len(lines)
