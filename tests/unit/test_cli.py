"""The ``usageflow`` command and the quick-start example, run as a user would run them."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import sqlite3
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

import usageflow
from tests.support.stripe_events import MONTH, SECRET, T0, Events, deliver
from usageflow import UsageFlow
from usageflow.cli import main
from usageflow.stores.sql import SCHEMA_VERSION

UTC = timezone.utc

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
    assert json.loads(capsys.readouterr().out) == {"schema_version": SCHEMA_VERSION}
    assert main(["plans", "load", str(plans), "--store", url]) == 0
    assert main(["plans", "load", str(plans), "--store", url]) == 0  # idempotent
    capsys.readouterr()
    assert main(["plans", "list", "--store", url]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [p["stripe_price_id"] for p in listed["plans"]] == [None, "price_pro"]
    flow = UsageFlow(url)
    assert len(flow.get_plans()) == 2
    assert flow.fetch_feature_limit_for_user("u", "ai_tokens") == 10000
    flow.consume("u", "exports")
    flow.close()
    assert main(["usage", "u", "exports", "--store", url]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "user_id": "u",
        "feature_name": "exports",
        "current": 1,
        "limit": 3,
        "remaining": 2,
        "is_unlimited": False,
        "credit_balance": 0,
    }


def test_packs_load_list_and_grants(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    path = tmp_path / "plans.toml"
    path.write_text(
        PLANS
        + """
[[packs]]
name = "10,000 tokens"
credits = { ai_tokens = 10000 }
stripe_payment_link_id = "plink_tokens"
payment_link_url = "https://buy.stripe.com/test_tokens"
expires_in_days = 365
"""
    )
    assert main(["packs", "load", str(path), "--store", url]) == 0
    assert main(["packs", "load", str(path), "--store", url]) == 0  # idempotent
    capsys.readouterr()
    assert main(["packs", "list", "--store", url]) == 0
    [pack] = json.loads(capsys.readouterr().out)["packs"]
    assert (pack["name"], pack["credits"], pack["expires_in_days"]) == (
        "10,000 tokens",
        {"ai_tokens": 10000},
        365,
    )
    with UsageFlow(url) as flow:
        assert flow.get_plans() == []  # `packs load` loads the packs only
        from usageflow.plans_file import load_plans

        [team] = load_plans(
            flow,
            '[[plans]]\nname = "Team"\nstripe_price_id = "price_team"\n'
            "limits = { exports = 50, ai = { limit = 10, per_seat = true } }\n",
        )
        assert (team.limits["ai"].per_seat, team.limits["exports"].per_seat) == (True, False)
        flow.grant_credits("u", "ai_tokens", 500, reason="welcome")
    assert main(["grants", "u", "--store", url, "--table"]) == 0
    table = capsys.readouterr().out
    assert "ai_tokens" in table and "500" in table and "welcome" in table
    no_packs = tmp_path / "no_packs.toml"
    no_packs.write_text(PLANS)
    assert main(["packs", "load", str(no_packs), "--store", url]) == 1
    assert "at least one [[packs]]" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text('[[packs]]\nname = "X"\ncredits = { tokens = 0 }\n')
    assert main(["packs", "load", str(bad), "--store", url]) == 1
    assert "packs[0].credits.tokens" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("nonsense", "not valid TOML"),
        ("[[plans]]\nis_free = true", "plans[2].name is required"),
        ('[[plans]]\nname = "A"\nlimits = { x = "many" }', "plans[2].limits.x.limit must be an"),
        ('[[plans]]\nname = "A"\nlimits = { x = { limit = 1, period = "year" } }', "period"),
        ('[[plans]]\nname = "A"\ncolour = "red"', "plans[2] has unknown key 'colour'"),
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


# -- the command as people run it -----------------------------------------------------------------
READ_COMMANDS = [
    ["plans", "list"],
    ["usage", "alice", "exports"],
    ["user", "alice"],
    ["top", "exports"],
    ["events"],
    ["events", "--user", "alice"],
    ["pending"],
]


def _env(**extra: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "src"), **extra}


def _run(args: list[str], cwd: Path, *, check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "usageflow", *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=check,
    )


def _json(capsys: pytest.CaptureFixture[str]) -> Any:
    captured = capsys.readouterr()
    assert captured.err == ""
    return json.loads(captured.out)


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    assert captured.out == ""
    return captured.err


def _migrated(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    assert main(["migrate", "--store", url]) == 0
    assert main(["plans", "load", str(ROOT / "examples" / "plans.toml"), "--store", url]) == 0
    return url


def test_version(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"usageflow {usageflow.__version__}\n"
    result = _run(["--version"], tmp_path)
    assert (result.returncode, result.stdout) == (0, f"usageflow {usageflow.__version__}\n")


def test_python_m_usageflow_loads_the_example_plans_and_reads_them(tmp_path: Path) -> None:
    """The real process: ``python -m usageflow``, output parsed as a script would."""
    plans = str(ROOT / "examples" / "plans.toml")
    expected = json.dumps({"schema_version": SCHEMA_VERSION}, indent=2)
    assert _run(["migrate"], tmp_path, check=True).stdout.strip() == expected
    _run(["plans", "load", plans], tmp_path, check=True)
    listed = json.loads(_run(["plans", "list"], tmp_path, check=True).stdout)
    by_name = {p["name"]: p for p in listed["plans"]}
    assert list(by_name) == ["Basic", "Pro", "Team"]
    assert [by_name[n]["limits"]["exports"]["limit"] for n in by_name] == [100, 1000, 5000]
    assert by_name["Basic"]["is_free"] and by_name["Basic"]["stripe_price_id"] is None
    assert by_name["Basic"]["limits"]["ai_credits"] == {"limit": 500, "period": "day"}
    assert by_name["Pro"]["stripe_price_id"] == "price_1PmPro00000000000000000"
    assert by_name["Pro"]["price_amount"] == "19.00"
    assert by_name["Team"]["limits"]["api_calls"] == {"limit": None, "period": "current_month"}
    assert by_name["Team"]["limits"]["ai_credits"] == {
        "limit": 100000,
        "period": "billing_cycle",
    }
    with UsageFlow(f"sqlite:///{tmp_path / 'usageflow.db'}") as flow:  # loading twice: same
        assert len(flow.get_plans()) == 3
        flow.consume("alice", "ai_credits", credits=120)
    user = json.loads(_run(["user", "alice"], tmp_path, check=True).stdout)
    credits = {f["feature_name"]: f for f in user["features"]}["ai_credits"]
    assert (credits["current"], credits["limit"], credits["remaining"]) == (120, 500, 380)


def test_installed_entry_point(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "usageflow"
    if not script.exists():
        pytest.skip("the package is not installed in this interpreter's environment")
    result = subprocess.run(
        [str(script), "events"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1 and "usageflow migrate" in result.stderr
    assert list(tmp_path.iterdir()) == []
    result = subprocess.run(
        [str(script), "--version"], env=_env(), capture_output=True, text=True, check=True
    )
    assert result.stdout == f"usageflow {usageflow.__version__}\n"


@pytest.mark.parametrize("command", READ_COMMANDS, ids=" ".join)
def test_read_commands_in_an_empty_folder_create_nothing(
    command: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("USAGEFLOW_STORE", raising=False)
    assert main(command) == 1
    err = _error(capsys)
    assert err.startswith("error: USAGE_CONFIG_ERROR: no database at usageflow.db")
    assert "`usageflow migrate --store sqlite:///usageflow.db`" in err
    assert main([*command, "--store", f"sqlite:///{tmp_path / 'sub dir' / 'x.db'}"]) == 1
    assert str(tmp_path / "sub dir" / "x.db") in _error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_python_m_usageflow_read_in_an_empty_folder(tmp_path: Path) -> None:
    result = _run(["usage", "alice", "exports"], tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    assert "no database at usageflow.db" in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", READ_COMMANDS, ids=" ".join)
def test_read_commands_refuse_a_database_without_the_schema(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "other.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY)")
        conn.commit()
    before = path.read_bytes()
    assert main([*command, "--store", f"sqlite:///{path}"]) == 1
    err = _error(capsys)
    assert "has no usageflow schema" in err and f"usageflow migrate --store sqlite:///{path}" in err
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]


def test_read_commands_refuse_an_older_schema(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = _migrated(tmp_path)
    with contextlib.closing(sqlite3.connect(tmp_path / "cli.db")) as conn:
        conn.execute("UPDATE usageflow_schema SET version = 2")
        conn.commit()
    capsys.readouterr()
    assert main(["user", "alice", "--store", url]) == 1
    assert f"is version 2, older than this usageflow's ({SCHEMA_VERSION})" in _error(capsys)
    assert main(["migrate", "--store", url]) == 0
    capsys.readouterr()
    assert main(["user", "alice", "--store", url]) == 0


def test_custom_table_names_are_checked_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = _migrated(tmp_path)
    capsys.readouterr()
    assert main(["events", "--store", url, "--usage-events-table", "ev"]) == 1
    assert "no usageflow schema (for these table names)" in _error(capsys)
    assert main(["migrate", "--store", url, "--usage-events-table", "ev"]) == 0
    assert main(["events", "--store", url, "--usage-events-table", "ev"]) == 0


def test_user_top_events_as_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = _migrated(tmp_path)
    start, end = datetime(2024, 1, 10, tzinfo=UTC), datetime(2124, 1, 10, tzinfo=UTC)
    with UsageFlow(url) as flow:
        flow.assign_plan(
            "alice",
            "price_1PmPro00000000000000000",
            email="alice@example.com",
            current_period_start=start,
            current_period_end=end,
        )
        flow.consume("alice", "exports", credits=3, metadata={"file": "a.png"})
        flow.consume("bob", "exports", credits=5, idempotency_key="job-1")
        flow.consume("carol", "exports")
        flow.reserve("alice", "ai_credits", 40)
        flow.increment_usage("dave", "api_calls")
    capsys.readouterr()

    assert main(["user", "alice", "--store", url, "--json"]) == 0
    user = _json(capsys)
    assert list(user) == ["user_id", "plan", "profile", "features"]
    assert (user["user_id"], user["plan"]["name"]) == ("alice", "Pro")
    assert user["profile"] == {
        "email": "alice@example.com",
        "plan": "price_1PmPro00000000000000000",
        "subscription_status": "active",
        "stripe_customer_id": None,
        "current_period_start": "2024-01-10T00:00:00Z",
        "current_period_end": "2124-01-10T00:00:00Z",
    }
    ai, exports = user["features"]
    assert ai == {
        "feature_name": "ai_credits",
        "period": "billing_cycle",
        "current": 40,
        "held": 40,
        "limit": 20000,
        "remaining": 19960,
        "is_unlimited": False,
        "window_start": "2024-01-10T00:00:00Z",
        "resets_at": "2124-01-10T00:00:00Z",
    }
    assert (exports["feature_name"], exports["current"], exports["limit"]) == ("exports", 3, 1000)
    assert exports["period"] == "current_month" and exports["resets_at"].endswith("-01T00:00:00Z")

    assert main(["user", "nobody", "--store", url]) == 0
    nobody = _json(capsys)
    assert nobody["profile"] is None and nobody["plan"]["name"] == "Basic"

    assert main(["top", "exports", "--store", url]) == 0
    top = _json(capsys)
    assert (top["feature_name"], top["period"]) == ("exports", "current_month")
    assert top["window_start"].endswith("-01T00:00:00Z")
    assert top["users"] == [
        {"user_id": "bob", "used": 5},
        {"user_id": "alice", "used": 3},
        {"user_id": "carol", "used": 1},
    ]
    assert main(["top", "exports", "--limit", "1", "--since", "2024-01-01", "--store", url]) == 0
    since = _json(capsys)
    assert (since["period"], since["window_start"]) == (None, "2024-01-01T00:00:00Z")
    assert since["users"] == [{"user_id": "bob", "used": 5}]
    assert main(["top", "api_calls", "--period", "lifetime", "--store", url]) == 0
    assert _json(capsys)["users"] == [{"user_id": "dave", "used": 1}]

    assert main(["events", "--store", url]) == 0
    events = _json(capsys)["events"]
    assert [(e["user_id"], e["feature_name"]) for e in events] == [
        ("dave", "api_calls"),
        ("carol", "exports"),
        ("bob", "exports"),
        ("alice", "exports"),
    ]
    assert list(events[2]) == [
        "id",
        "timestamp",
        "user_id",
        "feature_name",
        "event_type",
        "credits_used",
        "idempotency_key",
        "metadata",
    ]
    assert (events[2]["credits_used"], events[2]["idempotency_key"]) == (5, "job-1")
    assert events[3]["metadata"] == {"file": "a.png"}
    assert datetime.fromisoformat(events[0]["timestamp"].replace("Z", "+00:00")).tzinfo
    assert main(["events", "--feature", "exports", "--limit", "2", "--store", url]) == 0
    assert [e["user_id"] for e in _json(capsys)["events"]] == ["carol", "bob"]
    assert main(["events", "--user", "alice", "--store", url]) == 0
    assert [e["credits_used"] for e in _json(capsys)["events"]] == [3]


def test_pending_lists_subscriptions_waiting_for_their_customer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = _migrated(tmp_path)
    with UsageFlow(url, stripe_webhook_secret=SECRET) as flow:
        event = Events().subscription(
            "customer.subscription.created",
            "sub_42",
            "cus_42",
            "price_1PmTeam0000000000000000",
            "active",
            (T0, T0 + MONTH),
            T0,
        )
        assert deliver(flow, event).action == "pending"
    capsys.readouterr()
    assert main(["pending", "--store", url]) == 0
    assert _json(capsys) == {
        "subscriptions": [
            {
                "subscription_id": "sub_42",
                "customer_id": "cus_42",
                "plan": "price_1PmTeam0000000000000000",
                "status": "active",
                "started": "2024-01-15T12:00:00Z",
                "current_period_start": "2024-01-15T12:00:00Z",
                "current_period_end": "2024-02-15T12:00:00Z",
            }
        ]
    }
    assert main(["pending", "--table", "--store", url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "SUBSCRIPTION",
        "CUSTOMER",
        "PRICE",
        "STATUS",
        "STARTED",
        "PERIOD",
        "END",
    ]
    assert lines[2].split()[:2] == ["sub_42", "cus_42"]


def _columns(header: str, line: str) -> dict[str, str]:
    """A table row cut at the header's column starts (columns are two spaces apart)."""
    spans = [(m.group(), m.start()) for m in re.finditer(r"\S+(?: \S+)*", header)]
    bounds = [start for _name, start in spans[1:]] + [None]
    return {name: line[start:end].strip() for (name, start), end in zip(spans, bounds, strict=True)}


def test_table_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = _migrated(tmp_path)
    with UsageFlow(url) as flow:
        flow.consume("alice", "exports", credits=12)
        flow.consume("bob", "exports", credits=7)
    capsys.readouterr()

    assert main(["top", "exports", "--table", "--store", url]) == 0
    heading, blank, header, rule, *rows = capsys.readouterr().out.splitlines()
    assert heading.startswith("exports: current_month, counted from ") and blank == ""
    assert header == "#  USER   USED" and rule == "-  -----  ----"
    assert rows == ["1  alice    12", "2  bob       7"]

    assert main(["user", "alice", "--table", "--store", url]) == 0
    text = capsys.readouterr().out
    summary, features = text.split("\n\n")
    assert summary.splitlines()[:2] == ["user:             alice", "plan:             Basic (id 1)"]
    header, rule, *rows = features.splitlines()
    assert header.split() == [
        "FEATURE",
        "PERIOD",
        "USED",
        "HELD",
        "LIMIT",
        "REMAINING",
        "RESETS",
        "AT",
    ]
    assert rule.split() == ["-" * len(c) for c in rule.split()]
    row = _columns(header, rows[1])
    assert row == {
        "FEATURE": "exports",
        "PERIOD": "current_month",
        "USED": "12",
        "HELD": "0",
        "LIMIT": "100",
        "REMAINING": "88",
        "RESETS AT": row["RESETS AT"],
    }
    assert row["RESETS AT"].endswith("-01T00:00:00Z")

    assert main(["plans", "list", "--table", "--store", url]) == 0
    header, _rule, *rows = capsys.readouterr().out.splitlines()
    assert _columns(header, rows[2])["LIMITS"] == (
        "ai_credits=100000/billing_cycle, api_calls=unlimited/current_month, "
        "exports=5000/current_month"
    )
    assert main(["events", "--table", "--feature", "nothing", "--store", url]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "(none)"


def test_a_terminal_gets_a_table_and_a_pipe_gets_json(tmp_path: Path) -> None:
    _migrated(tmp_path)
    args = ["plans", "list", "--store", f"sqlite:///{tmp_path / 'cli.db'}"]
    piped = _run(args, tmp_path, check=True)
    assert json.loads(piped.stdout)["plans"][0]["name"] == "Basic"

    leader, follower = pty.openpty()
    try:
        process = subprocess.run(
            [sys.executable, "-m", "usageflow", *args],
            cwd=tmp_path,
            env=_env(),
            stdout=follower,
            stderr=subprocess.PIPE,
            timeout=60,
            check=True,
        )
        os.close(follower)
        follower = -1
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the terminal's other end is closed: all read
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(leader)
        if follower != -1:
            os.close(follower)
    assert process.stderr == b""
    text = b"".join(chunks).decode().replace("\r\n", "\n")
    assert text.splitlines()[0].split() == [
        "ID",
        "NAME",
        "STRIPE",
        "PRICE",
        "PRICE",
        "FREE",
        "LIMITS",
    ]
    assert "Team" in text and not text.lstrip().startswith("{")


def test_bad_command_lines_exit_2_and_store_errors_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = _migrated(tmp_path)
    capsys.readouterr()
    for argv in (
        ["top", "exports", "--limit", "0"],
        ["top", "exports", "--since", "last tuesday"],
        ["top", "exports", "--since", "2024-01-01", "--period", "day"],
        ["top", "exports", "--period", "billing_cycle"],
        ["events", "--json", "--table"],
        ["user"],
        ["frobnicate"],
    ):
        with pytest.raises(SystemExit) as done:
            main([*argv, "--store", url])
        assert done.value.code == 2, argv
        assert capsys.readouterr().out == ""
    # The plans limit ai_credits per day and per billing cycle: no one window to rank in.
    assert main(["top", "ai_credits", "--store", url]) == 1
    err = _error(capsys)
    assert err.startswith("error: USAGE_INVALID_PARAMS: plans limit 'ai_credits' over different")
    assert main(["top", "ai_credits", "--period", "day", "--store", url]) == 0


def test_read_commands_on_an_unmigrated_postgres_schema(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from tests.support.stores import postgres_url

    base = postgres_url()
    if base is None:
        pytest.skip("needs USAGEFLOW_TEST_POSTGRES_URL")
    from tests.support.postgres import fresh_schema, store_url

    with fresh_schema(base) as schema:
        url = store_url(base, schema)
        assert main(["user", "alice", "--store", url]) == 1
        assert "usageflow migrate" in _error(capsys)
        assert main(["migrate", "--store", url]) == 0
        with UsageFlow(url) as flow:
            flow.create_plan("Free", is_free=True, limits={"exports": 3})
            flow.consume("alice", "exports", credits=2)
        capsys.readouterr()
        assert main(["top", "exports", "--store", url]) == 0
        assert _json(capsys)["users"] == [{"user_id": "alice", "used": 2}]
