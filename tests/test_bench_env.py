"""The benchmark's env-speed table covers every task at every batch size, and --env-only updates only the
env-speed sections of an existing bench.json (speed targets are checked by running the benchmark)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from marl_stability.envs.fast_mpe import SUPPORTED_ENV_IDS

from marl_stability.bench import speed as bench


@pytest.mark.parametrize("env_id", ["simple_world_comm_v3", "collect_treasure_v1", "simple_crypto_v3"])
def test_rates_for_any_task(env_id: str) -> None:
    assert bench.env_steps_per_second_mpe2(0.05, env_id) > 0
    assert bench.env_steps_per_second_fast(3, 0.05, env_id) > 0


def test_table_rows_and_markdown() -> None:
    tasks = ("simple_v3", "simple_tag_v3")
    table = bench.env_speed_table(0.02, rounds=2, tasks=tasks, batches=(1, 4))
    assert list(table) == list(tasks)
    for row in table.values():
        sps = row["steps_per_second"]
        assert set(sps) == {"mpe2", "fast_B1", "fast_B4"} and all(v > 0 for v in sps.values())
        # the ratio is the median of the two rounds' own ratios (their mean), inside their range
        lo, hi = row["speedup_range"]["4"]
        assert lo <= row["speedup"]["4"] <= hi and row["speedup"]["4"] == pytest.approx((lo + hi) / 2, abs=0.11)
    text = bench.env_speed_markdown(table, batches=(1, 4))
    lines = text.splitlines()
    assert lines[0] == "| task | mpe2 steps/s | B = 1 | B = 4 |" and len(lines) == 2 + len(tasks)
    assert lines[3].startswith("| `simple_tag_v3` |")
    ranged = bench.env_speed_markdown(table, batches=(1, 4), spread_at=4).splitlines()
    assert ranged[0].endswith("| B = 4: ratio per round, min – max |") and ranged[1] == "|---|---|---|---|---|"
    lo, hi = table["simple_v3"]["speedup_range"]["4"]
    assert ranged[2].endswith(f"| ×{lo:,.0f} – ×{hi:,.0f} |")


def test_rounds_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    seen = []
    monkeypatch.setattr(bench, "env_speed_table", lambda seconds, rounds: seen.append(rounds) or {})
    bench.main(["--env-only", "--rounds", "7", "--out", str(tmp_path / "b.json")])
    assert seen == [7] and json.loads((tmp_path / "b.json").read_text())["env_speed_setup"]["rounds"] == 7
    for bad in ("0", "x"):
        with pytest.raises(SystemExit) as e:
            bench.main(["--env-only", "--rounds", bad, "--out", str(tmp_path / "c.json")])
        assert e.value.code == 2 and "positive integer" in capsys.readouterr().err
    assert not (tmp_path / "c.json").exists()


def test_env_only_keeps_the_other_sections(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "bench.json"
    out.write_text(json.dumps({"quick": False, "full_runs": [1, 2], "env_speedup": {"256": 1.0}}))
    fake = {env_id: {"steps_per_second": {"mpe2": 10, **{f"fast_B{b}": 10 * b for b in bench.ENV_BATCHES}},
                     "speedup": {str(b): float(b) for b in bench.ENV_BATCHES}} for env_id in SUPPORTED_ENV_IDS}
    monkeypatch.setattr(bench, "env_speed_table", lambda seconds, rounds: fake)
    bench.main(["--env-only", "--quick", "--out", str(out)])
    data = json.loads(out.read_text())
    assert data["full_runs"] == [1, 2] and data["quick"] is False  # untouched
    assert data["env_speedup"] == {"256": 1.0}  # the full run's spread keys too
    assert data["env_speed"] == fake and data["env_speed_quick"] is True
    assert data["env_speed_setup"]["rounds"] == 1
