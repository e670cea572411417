"""The ``usageflow`` command and the quick-start example, run as a user would run them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from usageflow import UsageFlow
from usageflow.cli import main

ROOT = Path(__file__).resolve().parents[2]

PLANS = """
[[plans]]
name = "Free"
is_free = true
limits = { exports = 3, ai_tokens = { limit = 10000, period = "day" } }

[[plans]]
name = "Pro"
stripe_price_id = "price_pro"
price_amount = "19.00"
payment_link_url = "https://buy.stripe.com/test_pro"
limits = { exports = 1000, api_calls = -1 }
"""


def test_migrate_load_list_and_usage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    plans = tmp_path / "plans.toml"
    plans.write_text(PLANS)
    assert main(["migrate", "--store", url]) == 0
    assert main(["plans", "load", str(plans), "--store", url]) == 0
    assert main(["plans", "load", str(plans), "--store", url]) == 0  # idempotent
    assert main(["plans", "list", "--store", url]) == 0
    out = capsys.readouterr().out
    assert "schema version 4" in out and "price_pro" in out
    flow = UsageFlow(url)
    assert len(flow.get_plans()) == 2
    assert flow.fetch_feature_limit_for_user("u", "ai_tokens") == 10000
    flow.consume("u", "exports")
    flow.close()
    assert main(["usage", "u", "exports", "--store", url]) == 0
    assert '"current": 1' in capsys.readouterr().out


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("nonsense", "not valid TOML"),
        ("[[plans]]\nis_free = true", "needs a name"),
        ('[[plans]]\nname = "A"\nlimits = { x = "many" }', "limit_value must be an int"),
        ('[[plans]]\nname = "A"\nlimits = { x = { limit = 1, period = "year" } }', "period"),
        ('[[plans]]\nname = "A"\ncolour = "red"', "unknown keys"),
    ],
)
def test_bad_plans_files_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, fragment: str
) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    good_then_bad = PLANS + "\n" + text if text.startswith("[[plans]]") else text
    path = tmp_path / "plans.toml"
    path.write_text(good_then_bad)
    assert main(["plans", "load", str(path), "--store", url]) == 1
    assert fragment in capsys.readouterr().err
    assert UsageFlow(url).get_plans() == []


def test_print_sql_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "never.db"
    assert main(["migrate", "--print-sql", "--store", f"sqlite:///{db}"]) == 0
    assert 'CREATE TABLE IF NOT EXISTS "usage_events"' in capsys.readouterr().out
    assert not db.exists()


def test_quickstart_example_runs_on_the_embedded_default(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = result.stdout.splitlines()
    assert lines[0].startswith("exported poster-1.png (4 left")
    assert lines[5].startswith("402 quota spent (5/5); upgrade: https://buy.stripe.com/test_pro?")
    assert "exported poster-9.png (997 left this month)" in result.stdout
    assert (tmp_path / "usageflow.db").exists()


def test_print_sql_for_a_dialect_and_custom_tables(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "migrate",
                "--print-sql",
                "--dialect",
                "postgresql",
                "--usage-events-table",
                "ev",
                "--profiles-table",
                "accounts",
            ]
        )
        == 0
    )
    sql = capsys.readouterr().out
    assert "ev_counters" in sql and "accounts" in sql and "ROW LEVEL SECURITY" in sql.upper()
    assert main(["migrate", "--print-sql", "--dialect", "sqlite", "--user-plans-table", "p"]) == 0
    assert 'CREATE TABLE IF NOT EXISTS "p"' in capsys.readouterr().out
    assert main(["migrate", "--print-sql", "--user-plans-table", "bad name"]) == 1
