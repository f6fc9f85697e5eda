"""Load: 50 clients, each with its own DEALER socket (threads of this process), send info,
status, list and tts requests back to back for 5 s while a draft render runs. Every request is
answered (tts may say `busy`: at most 8 wait, by design), quick requests stay quick, and the
render finishes. bench/load_bench.py is the long version (processes, a minute, a table)."""
from __future__ import annotations

import pytest

from bench.load_bench import run_load, table
from shared import protocol as p

CLIENTS = 50
SECONDS = 5.0
# Regression guards, far above what was measured here (docs/reliability.md: p99 of quick
# requests ~0.2 s with 50 clients on 2 cores); a daemon that serialised quick requests behind
# renders or TTS would blow them.
QUICK_P99_LIMIT_S = 2.0
TTS_P99_LIMIT_S = 10.0


@pytest.mark.timeout(300)
def test_fifty_clients_are_all_answered_while_a_draft_render_runs(daemon_factory, projects,
                                                                  watch_until):
    daemon = daemon_factory()
    client = daemon.client(timeout=120)
    job = client.submit(projects.long_audio(90, title="under load"))
    watch_until(client, job.id, lambda e: isinstance(e, p.ProgressEvent) and e.phase == "frames")

    result = run_load(daemon.address, job.id, CLIENTS, SECONDS)
    print(f"\n{CLIENTS} clients × {SECONDS:.0f} s during a draft render:\n{table(result)}")

    assert result.failures == {}                     # no timeouts, no error but busy
    for kind in ("info", "status", "list"):
        stats = result.stats[kind]
        assert stats.busy == 0 and stats.ok >= 50, (kind, stats)
        assert stats.p99_ms / 1000 < QUICK_P99_LIMIT_S, (kind, stats)
    tts = result.stats["tts"]
    assert tts.ok >= 10 and tts.p99_ms / 1000 < TTS_P99_LIMIT_S, tts
    final = client.wait(job.id)
    assert (final.state, final.attempts) == ("done", 1), final.error
    assert {a.name for a in final.artifacts} == set(p.ARTIFACTS)
    assert " ERROR " not in daemon.log()
