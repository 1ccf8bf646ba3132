# SPDX-License-Identifier: Apache-2.0
"""The SLA gate: parsing, checking against a report, and the exit status of zipvl-bench."""

import pytest

from zipvl import ZipVLConfigError
from zipvl.bench import check_sla, parse_sla, sla_summary
from zipvl.bench.cli import main
from zipvl.bench.sla import SLA_EXIT_CODE

REPORT = {
    "prefill": [{"n": 1024, "zipvl": {"median_s": 0.5}, "kv_bytes_zipvl": 2**20},
                {"n": 2048, "zipvl": {"median_s": 1.25}, "kv_bytes_zipvl": 3 * 2**20},
                {"n": 4096, "skipped": "OutOfMemoryError"}],
    "decode": [{"context": 2048, "kv_bytes_zipvl": 3 * 2**20, "best": {"zipvl": {"batch": 4, "tokens_per_s": 40.0}}}],
}


def test_parse():
    assert parse_sla("ttft_ms=800, decode_tps=40,kv_mib=512") == {"ttft_ms": 800.0, "decode_tps": 40.0,
                                                                  "kv_mib": 512.0}
    for bad in ("", "latency=3", "ttft_ms", "ttft_ms=fast"):
        with pytest.raises(ZipVLConfigError):
            parse_sla(bad)


def test_check_uses_longest_measured_length():
    checks = {c.metric: c for c in check_sla(REPORT, {"ttft_ms": 1300, "decode_tps": 30, "kv_mib": 3})}
    assert checks["ttft_ms"].value == pytest.approx(1250.0) and checks["ttft_ms"].ok
    assert checks["decode_tps"].value == 40.0 and checks["decode_tps"].ok
    assert checks["kv_mib"].value == pytest.approx(3.0) and checks["kv_mib"].ok
    assert sla_summary(list(checks.values())).startswith("SLA met")


def test_missed_and_unmeasured_budgets_fail():
    checks = check_sla(REPORT, {"ttft_ms": 1000, "decode_tps": 50})
    assert [c.ok for c in checks] == [False, False]
    line = sla_summary(checks)
    assert line.startswith("SLA missed: ttft_ms 1250 > budget 1000") and "+1 more" in line and "\n" not in line
    no_decode = check_sla({"prefill": REPORT["prefill"], "decode": []}, {"decode_tps": 1})
    assert not no_decode[0].ok and "not measured" in no_decode[0].reason


TINY = ["--model", "tiny:llama", "--lengths", "160", "--repeats", "1", "--warmup", "0", "--skip",
        "attention,crossover,decode", "--no-progress", "--quiet"]


def test_cli_exit_status_impossible_budget(capsys):
    assert main(TINY + ["--sla", "ttft_ms=0.000001"]) == SLA_EXIT_CODE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("zipvl-bench: SLA missed: ttft_ms")


def test_cli_exit_status_loose_budget(capsys):
    assert main(TINY + ["--sla", "ttft_ms=1e9,kv_mib=1e6"]) == 0
    assert "SLA met" in capsys.readouterr().out


def test_cli_unmeasured_budget_fails(capsys):
    assert main(TINY + ["--sla", "decode_tps=0.001"]) == SLA_EXIT_CODE
    assert "not measured" in capsys.readouterr().err


def test_cli_bad_sla_is_an_input_error(capsys):
    assert main(TINY + ["--sla", "speed=9"]) == 2
    assert "bad --sla item" in capsys.readouterr().err
