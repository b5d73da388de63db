"""Result rows and results-file integrity: typed rows, what is refused with file:line, what is never lost, and
outputs checked writable before any compute (issue 12, defects 9, 13, 14 and 16)."""

import json
import os
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from made_estimates import made_estimate

from lowprob import cli
from lowprob.core import Budget, LowprobError
from lowprob.engine import Engine, Job
from lowprob.results import ProtocolTags, ResultRow, ResultsFile, RowSpec, check_writable, read_results


def _spec(name: str, seed: int = 0) -> RowSpec:
    return RowSpec(model="tiny", distribution=name, distribution_hash="h", target="t", estimator="naive",
                   label="naive", budget=Budget(model_calls=10), seed=seed)


def _row(name: str, value: float = 0.5) -> ResultRow:
    return ResultRow.of(_spec(name), estimate=made_estimate(value))


def _line(row: ResultRow) -> bytes:
    return json.dumps(row.model_dump(mode="json"), sort_keys=True).encode()


def test_a_complete_last_row_without_newline_is_kept_and_terminated(tmp_path: Path) -> None:
    """Defect 13: the old trim deleted a complete last row that lacked its newline (and the run never redid it)."""
    path = tmp_path / "r.jsonl"
    path.write_bytes(_line(_row("a")) + b"\n" + _line(_row("b")))  # no trailing newline
    results = ResultsFile(path)
    assert [r.distribution for r in results.rows()] == ["a", "b"]
    results.append(_row("c"))
    assert [r.distribution for r in read_results(path)] == ["a", "b", "c"]
    assert path.read_bytes().endswith(b"\n") and path.read_bytes().count(b"\n") == 3


def test_only_a_partial_tail_is_trimmed(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    whole = _line(_row("b"))
    path.write_bytes(_line(_row("a")) + b"\n" + whole[: len(whole) // 2])  # killed halfway through row b
    results = ResultsFile(path)
    assert [r.distribution for r in results.rows()] == ["a"]
    results.append(_row("b"))
    assert path.read_bytes() == _line(_row("a")) + b"\n" + whole + b"\n"


@pytest.mark.parametrize(("line", "message"), [
    (b"5", r"r.jsonl:2: not a results row"),
    (b"{}", r"r.jsonl:2: not a results row"),
    (b"[1, 2]", r"r.jsonl:2: not a results row"),
    (b'{"format_version": 1, "key": "k"}', r"r.jsonl:2: not a valid results row: model: Field required"),
    (b'{"format_version": 9, "key": "k"}', r"r.jsonl:2: a row of format 9, written by a newer lowprob"),
])
def test_a_line_that_is_not_a_row_is_refused_with_file_and_line(tmp_path: Path, line: bytes, message: str) -> None:
    """Defect 14: `5` gave a TypeError and `{}` a KeyError in the summary after the run."""
    path = tmp_path / "r.jsonl"
    path.write_bytes(_line(_row("a")) + b"\n" + line + b"\n" + _line(_row("b")) + b"\n")
    with pytest.raises(LowprobError, match=message):
        read_results(path)
    with pytest.raises(LowprobError, match=message):  # also as an unterminated last line: it parses, so it is no tail
        path.write_bytes(_line(_row("a")) + b"\n" + line)
        read_results(path)


def test_rows_of_the_earlier_format_are_refused_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"key": "abc", "model": "m", "estimate": {"value": 0.1}}) + "\n")
    with pytest.raises(LowprobError, match=r"r.jsonl:1: a row written by an earlier lowprob .* Move the file aside"):
        read_results(path)


def test_a_repeated_key_is_counted_once(tmp_path: Path) -> None:
    """Defect 14: a duplicated row was accepted and double-counted (the summary said `runs 2`)."""
    path = tmp_path / "r.jsonl"
    first, repeat = _row("a", 0.25), _row("a", 0.75)
    assert first.key == repeat.key
    path.write_bytes(b"\n".join([_line(first), _line(_row("b")), _line(repeat)]) + b"\n")
    rows = read_results(path)
    assert [(r.distribution, r.estimate.value if r.estimate else None) for r in rows] == [("a", 0.25), ("b", 0.5)]


def test_a_row_holds_an_estimate_or_an_error() -> None:
    with pytest.raises(ValueError, match="an estimate or an error"):
        ResultRow.of(_spec("a"))
    with pytest.raises(ValueError, match="not both"):
        ResultRow.of(_spec("a"), estimate=made_estimate(), error="boom")
    marker = RowSpec(model="m", distribution="d", distribution_hash="h", target=None, estimator="itgis",
                     label="itgis", budget=Budget(model_calls=10), seed=None,
                     protocol=ProtocolTags(phase="unsupported"))
    assert ResultRow.of(marker, error="needs independent positions").phase == "unsupported"


def test_append_does_not_reopen_a_file_that_needs_no_trim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Defect 16: the trim opened the file `rb+` even when nothing needed trimming (failing on a 444 file)."""
    path = tmp_path / "r.jsonl"
    ResultsFile(path).append(_row("a"))
    modes: list[str] = []
    real_open = Path.open

    def spy(self: Path, mode: str = "r", *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        modes.append(mode)
        return real_open(self, mode, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "open", spy)
    ResultsFile(path).append(_row("b"))
    assert "rb+" not in modes and len(read_results(path)) == 2


def _check_writable_as_unprivileged(path: Path) -> str:
    """check_writable(path) in a forked child that drops root (who may write anything) to `nobody`; returns the
    error message or 'ok'."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            try:
                check_writable(path)
                message = "ok"
            except LowprobError as exc:
                message = str(exc)
            os.write(write, message.encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as fh:
        message = fh.read()
    os.waitpid(pid, 0)
    return message


def test_a_read_only_results_file_fails_before_compute() -> None:
    """Defect 16: a 444 results file raised PermissionError only after the first estimate was computed."""
    with tempfile.TemporaryDirectory(dir="/tmp") as folder:  # pytest's own folders are private to root
        Path(folder).chmod(0o755)
        path = Path(folder) / "r.jsonl"
        ResultsFile(path).append(_row("a"))
        path.chmod(0o444)
        assert "cannot write results file" in _check_writable_as_unprivileged(path)
        path.chmod(0o666)
        assert _check_writable_as_unprivileged(path) == "ok"


@pytest.mark.parametrize("name", ["", ".", "folder", "/proc/lowprob-results.jsonl", "/proc/no/such/r.jsonl",
                                  "file/r.jsonl"])
def test_unwritable_outputs_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Defect 9: a folder, an empty path, a path under /proc or under a file."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(LowprobError, match="is a folder|cannot write results file"):
        check_writable(name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder"]  # the check creates nothing


@pytest.mark.parametrize("output", ["folder", "/proc/x.jsonl", ""])
def test_estimate_output_is_checked_before_any_compute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       output: str) -> None:
    """Defect 9: `estimate --output` on a folder or /proc failed with a traceback after the compute, losing it."""
    (tmp_path / "folder").mkdir()
    monkeypatch.chdir(tmp_path)

    def no_compute(*args: object, **kwargs: object) -> None:
        raise AssertionError("compiled the problem before checking --output")

    monkeypatch.setattr(cli, "compile_problem", no_compute)
    result = CliRunner().invoke(cli.main, ["estimate", "hex", "--target", 'argmax == "a"', "--output", output])
    assert result.exit_code == 1, result.output
    assert "is a folder" in result.output or "cannot write results file" in result.output
    assert "Traceback" not in result.output


def test_engine_skips_done_jobs_and_group_markers(tmp_path: Path) -> None:
    engine = Engine(tmp_path / "r.jsonl")
    marker = RowSpec(model="tiny", distribution="g", distribution_hash="h", target=None, estimator="naive",
                     label="naive", budget=Budget(model_calls=10), seed=None,
                     protocol=ProtocolTags(phase="unsupported"))
    jobs = [Job(_spec("a")), Job(_spec("b"), group=marker.digest()), Job(_spec("c"), group=marker.digest())]
    computed: list[str] = []

    def compute(job: Job) -> ResultRow:
        computed.append(job.spec.distribution)
        if job.group is not None:
            return ResultRow.of(marker, error="cannot run here")
        return ResultRow.of(job.spec, estimate=made_estimate())

    written = [row.key for _, row in engine.run(jobs, compute)]
    assert computed == ["a", "b"] and written == [jobs[0].key, marker.digest()]
    again = Engine(tmp_path / "r.jsonl")
    assert again.pending(jobs) == [] and list(again.run(jobs, compute)) == []


def test_estimate_output_writes_a_typed_row_once(tmp_path: Path) -> None:
    demo = str(Path(__file__).resolve().parents[1] / "examples/specs/demo.lp")
    out = tmp_path / "r.jsonl"
    args = ["estimate", demo, "--model", "random-1l", "--target", 'argmax in /^[a-z ]+$/', "--budget-calls", "2000",
            "--seed", "4", "--output", str(out)]
    first = CliRunner().invoke(cli.main, args)
    assert first.exit_code == 0 and "written to" in first.output, first.output
    (row,) = read_results(out)
    assert (row.model, row.estimator, row.seed, row.budget.model_calls) == ("random-1l", "naive", 4, 2000)
    assert row.estimate is not None and row.estimate.forward_passes == 2000 and row.experiment is None
    again = CliRunner().invoke(cli.main, args)  # the same key: the row is kept, not appended twice
    assert again.exit_code == 0 and "already in" in again.output and read_results(out) == [row]
