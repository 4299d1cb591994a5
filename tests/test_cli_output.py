"""The CLI's human output prints names, ARNs, reasons and Databend's messages as they are: rich
would read ``:secret:`` (in every Secrets Manager ARN) as an emoji code and ``[...]`` as markup,
mangling the text or failing on a closing tag."""

from __future__ import annotations

import time

import pytest

from worker.cli.follow import print_outcomes
from worker.cli.runs import _print_status
from worker.domain.model import TableOutcome, TableStatus
from worker.domain.runs import RunRecord
from worker.domain.sql import TableName
from worker.runtime.launch import RunProgress

ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:databend/lake-main-AgTyoM"
HOSTILE = TableName("sales", "t[/x] :secret: [red]")
REASON = "Databend said [request_kind=login] [/bold] :thumbs_up: denied"


def _progress(status: str = "failed") -> RunProgress:
    run = RunRecord(
        "r1",
        "rotation",
        ARN,
        "v1",
        status=status,
        connection="lake_main_1a2b3c4d",
        error="1 of 2 tables failed [/x]",
        created_at=time.time() - 5,
        updated_at=time.time(),
    )
    outcomes = [
        TableOutcome(table=HOSTILE, status=TableStatus.FAILED, rule="binding [b]", reason=REASON),
        TableOutcome(table=TableName("sales", "orders"), status=TableStatus.VALIDATED, rows_read=1),
    ]
    return RunProgress(run, outcomes)


def _one_line(text: str) -> str:
    """Table cells may wrap: compare with the layout's white space and borders taken out."""
    return "".join(ch for ch in text if not ch.isspace() and ch not in "│┃|")


def test_status_prints_arns_names_and_reasons_verbatim(capsys: pytest.CaptureFixture[str]) -> None:
    _print_status(_progress())
    out = _one_line(capsys.readouterr().out)
    for text in (ARN, str(HOSTILE), REASON, "1of2tablesfailed[/x]", "binding[b]"):
        assert _one_line(text) in out
    assert "㊙" not in out and "👍" not in out


def test_followed_run_prints_its_error_and_failed_objects_verbatim(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from worker.cli.common import plain_console

    print_outcomes(_progress(), plain_console(stderr=True))
    err = _one_line(capsys.readouterr().err)
    for text in (str(HOSTILE), REASON, "runr1failed:1of2tablesfailed[/x]"):
        assert _one_line(text) in err


def test_a_key_rotations_status_names_its_step_not_a_connection_it_has_none_of(
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = RunRecord("k1", "key-rotation", ARN, "v2", status="succeeded", phase="switching")
    _print_status(RunProgress(run, []))
    first = capsys.readouterr().out.splitlines()[0]
    assert first == f"run k1 (key-rotation) succeeded: secret {ARN} version v2, step switching"


BLOCKED = "not going to deactivate ******D24: 4 object(s) may still use it: team.t"


@pytest.mark.parametrize(
    ("data", "step"),
    [
        ({}, "retiring: old key's deactivation scheduled"),
        ({"deactivated_at": 1.0}, "retiring: old key deactivated, its deletion scheduled"),
        ({"deactivated_at": 1.0, "deleted_at": 2.0}, "retired: old key deleted"),
        ({"retire_blocked": BLOCKED}, "old key's retirement blocked"),
    ],
)
def test_a_retiring_key_rotation_says_where_the_old_keys_retirement_stands(
    capsys: pytest.CaptureFixture[str], data: dict[str, float | str], step: str
) -> None:
    run = RunRecord(
        "k1", "key-rotation", ARN, "v2", status="succeeded", phase="retired", data=dict(data)
    )
    _print_status(RunProgress(run, []))
    out = capsys.readouterr().out
    assert out.splitlines()[0].endswith(f"version v2, step {step}")
    reason = _one_line("old key's retirement blocked: " + BLOCKED)
    assert (reason in _one_line(out)) == ("retire_blocked" in data)


def test_an_abort_that_kept_its_new_key_says_why(capsys: pytest.CaptureFixture[str]) -> None:
    from worker.cli.common import plain_console

    why = "not going to delete the aborted rotation's new key ******ENW: 3 object(s) may use it"
    data = {"abort_blocked": why}
    run = RunRecord("k1", "key-rotation", ARN, "v2", status="aborted", phase="switching", data=data)
    print_outcomes(RunProgress(run, []), plain_console())
    shown = _one_line(capsys.readouterr().out)
    assert _one_line("the aborted rotation's new key kept: " + why) in shown


def test_a_key_rotations_dry_run_warns_of_objects_on_the_key_the_binding_does_not_select(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Another team's table shows a key like the secret's (the same AK***24): the binding does
    not select it, so the old key's retirement will wait for it; the dry run says so by name."""
    from worker.cli.common import plain_console
    from worker.cli.keys import _show
    from worker.domain.model import ExternalTable, PlannedTable, StorageParam
    from worker.flow.key_plan import KeyRotationPlan

    def on_key(name: TableName) -> ExternalTable:
        return ExternalTable(name, StorageParam(kind="s3", bucket="b", ak="AK***24"))

    ours, theirs = TableName("sales", "orders"), TableName("team", "t")
    plan = KeyRotationPlan(
        secret_arn=ARN,
        secret_name="databend/lake-main",
        binding="lake-main",
        user="lake-reader",
        current_version="v1",
        current_key="AKIAOURSOURSOURS0X24",
        keys=[],
        key_to_remove=None,
        refusal=None,
        tables=[on_key(ours), on_key(theirs)],
        planned=[PlannedTable(ours, "selector sales.*", "ak:AK***24")],
    )
    _show(plain_console(), plan)
    out = _one_line(capsys.readouterr().out)
    assert _one_line("warning: 1 object(s) may use the current key but the binding") in out
    assert out.endswith(_one_line("none shows it: team.t"))
