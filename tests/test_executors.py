"""Executors: ground truth, experiments, reproduce and the known-answer bench on local processes and a real local
Ray cluster equal the serial run; a killed worker's task is rerun and counted once; a stopped run resumes from its
file."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import os
import signal
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from test_reproduce import CONFIG as REPRODUCE_CONFIG
from test_reproduce import SPECS as REPRODUCE_SPECS
from test_reproduce import _ground_truth as exact_ground_truth

import lowprob.ground_truth_tasks as gt_tasks
from lowprob import reproduce as rp
from lowprob.api import SpecSource, compile_source, resolve_spec
from lowprob.cli import main
from lowprob.core.errors import LowprobError
from lowprob.core.model import ModelAdapter
from lowprob.core.output_target import OutputTarget
from lowprob.executors import Executor, ExecutorSettings, SerialExecutor, _GroupQueue
from lowprob.experiments import Experiment, plan, run
from lowprob.ground_truth import GroundTruth, run_ground_truth
from lowprob.ground_truth_tasks import ShardSettings, ShardTask, count_ground_truth, count_output_ground_truth
from lowprob.output_ground_truth import OutputGroundTruth
from lowprob.plugins import load_registry
from lowprob.results import ResultRow, read_results

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "examples/specs/demo.lp")
SAMPLES, SETTINGS = 2**12, ShardSettings(2**9, batch_size=512)
KINDS = ["processes", "ray"]


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Any]:
    """One real local Ray cluster (2 CPUs) for the whole session; test-module tasks travel by value."""
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'lowprob[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    ray.shutdown()


@pytest.fixture(params=KINDS)
def executor(request: pytest.FixtureRequest) -> Executor:
    if request.param == "ray":
        request.getfixturevalue("ray_cluster")
    return ExecutorSettings(executor=request.param, workers=2, retries=2).create()


@pytest.fixture(scope="module")
def demo() -> tuple[Any, SpecSource]:
    registry = load_registry()
    source = resolve_spec(DEMO, registry)
    return compile_source(registry, source, model="random-1l"), source


@pytest.fixture(scope="module")
def serial_file(demo: tuple[Any, SpecSource], tmp_path_factory: pytest.TempPathFactory) -> GroundTruth:
    compiled, source = demo
    return run_ground_truth(compiled.model, compiled.spec.distribution(None), source.name,
                            tmp_path_factory.mktemp("serial") / "gt.json", samples=SAMPLES,
                            shard_size=SETTINGS.shard_size, batch_size=SETTINGS.batch_size, progress=False)


def count(executor: Executor, demo: tuple[Any, SpecSource], output: Path, source: SpecSource | None = None,
          samples: int = SAMPLES) -> GroundTruth:
    compiled, demo_source = demo
    return count_ground_truth(executor, compiled.model, compiled.spec.distribution(None), demo_source.name, output,
                              source=source or demo_source, dist_name=None, samples=samples, settings=SETTINGS,
                              progress=False)


def test_ground_truth_counts_equal_the_serial_run_bit_for_bit(executor: Executor, demo: tuple[Any, SpecSource],
                                                               serial_file: GroundTruth, tmp_path: Path) -> None:
    half = count(executor, demo, tmp_path / "gt.json", samples=SAMPLES // 2)  # a driver stopped half-way ...
    assert half.seeds == tuple(range(4))
    whole = count(executor, demo, tmp_path / "gt.json")  # ... resumes from the file
    saved = GroundTruth.load(tmp_path / "gt.json")
    assert whole.seeds == saved.seeds == serial_file.seeds == tuple(range(8))
    assert saved.to_json()["checksum"] == serial_file.to_json()["checksum"]  # counts, seeds and reservoir
    assert saved.metadata["forward"] == serial_file.metadata["forward"]


@dataclasses.dataclass(frozen=True)
class DyingShard(ShardTask):
    """Shard 3 kills its own worker (SIGKILL) the first time it runs: a marker next to the spec file says so."""

    def run(self) -> GroundTruth:
        marker = Path(self.source.origin).with_suffix(".killed")
        if self.seed == 3 and not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return super().run()


def test_a_killed_worker_task_is_rerun_and_counted_once(executor: Executor, demo: tuple[Any, SpecSource],
                                                        serial_file: GroundTruth, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    spec = tmp_path / "demo.lp"
    spec.write_text(Path(DEMO).read_text())
    monkeypatch.setattr(gt_tasks, "ShardTask", DyingShard)
    total = count(executor, demo, tmp_path / "gt.json", SpecSource(spec.read_text(), str(spec), "demo"))
    assert spec.with_suffix(".killed").exists(), "the worker running shard 3 should have been killed"
    assert total.seeds == tuple(range(8)) and total.samples == SAMPLES
    assert GroundTruth.load(tmp_path / "gt.json").to_json()["checksum"] == serial_file.to_json()["checksum"]


@dataclasses.dataclass(frozen=True)
class AlwaysDies:
    group: str = "g"

    def run(self) -> None:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclasses.dataclass(frozen=True)
class Fails:
    group: str = "g"

    def run(self) -> None:
        raise LowprobError("this task cannot run")


def test_a_task_that_always_kills_its_worker_stops_the_run_and_a_task_error_reaches_the_driver() -> None:
    runner = ExecutorSettings(executor="processes", workers=1, retries=1).create()
    with pytest.raises(LowprobError, match=r"a worker died running AlwaysDies 2 times \(exit code -9\); giving up "
                                           r"after 1 reruns"):
        list(runner.run([AlwaysDies()]))
    with pytest.raises(LowprobError, match="this task cannot run"):
        list(runner.run([Fails()]))


class GonePipe:
    """A worker's end of a pipe whose driver has gone: one task to receive, then every send fails."""

    def __init__(self, task: Any) -> None:
        self.tasks, self.sent = [task], 0

    def recv(self) -> Any:
        if not self.tasks:
            raise EOFError
        return self.tasks.pop()

    def send(self, obj: Any) -> None:
        self.sent += 1
        raise BrokenPipeError(32, "Broken pipe")


def test_a_worker_whose_driver_is_gone_exits_quietly(capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import lowprob.executors as executors

    monkeypatch.setattr(executors, "_start_worker", lambda threads, device: None)  # keep this process's threads
    monkeypatch.setattr(executors.signal, "signal", lambda *args: None)  # and its Ctrl-C
    for task in (Sleeps(0), Fails()):
        pipe = GonePipe(task)
        executors._process_main(pipe, 1, None)  # type: ignore[arg-type]  # returns instead of raising a BrokenPipeError
        assert pipe.sent == 1  # one answer tried, no second send of an error about the first
    assert capsys.readouterr().err == ""


@dataclasses.dataclass(frozen=True)
class Sleeps:
    seconds: float
    group: str = "g"

    def run(self) -> float:
        time.sleep(self.seconds)
        return self.seconds


def test_stopping_a_run_ends_the_workers_still_running_tasks() -> None:
    runner = ExecutorSettings(executor="processes", workers=2).create()
    started = time.monotonic()
    results = runner.run([Sleeps(0), Sleeps(120), Sleeps(120)])
    assert next(results)[1] == 0
    results.close()  # the driver stops (Ctrl-C, an error): the two-minute tasks are killed, not waited for
    assert time.monotonic() - started < 60


@pytest.mark.gpu
def test_ground_truth_on_gpu_workers_equals_the_serial_gpu_run(demo: tuple[Any, SpecSource], tmp_path: Path) -> None:
    compiled, source = demo
    on_gpu = copy.deepcopy(compiled.model.model).to("cuda")  # the module's model stays on the CPU
    adapter = ModelAdapter(on_gpu, compiled.model.vocab, compiled.model.name, device="cuda")
    serial = run_ground_truth(adapter, compiled.spec.distribution(None), source.name, tmp_path / "serial.json",
                              samples=SAMPLES, shard_size=SETTINGS.shard_size, batch_size=SETTINGS.batch_size,
                              progress=False)
    runner = ExecutorSettings(executor="processes", workers=2, gpus_per_worker=1).create()
    total = count(runner, demo, tmp_path / "workers.json")
    assert total.metadata["device"].startswith("cuda")
    assert total.to_json()["checksum"] == serial.to_json()["checksum"]


EXPERIMENT = """
name = "executors"
output = "results.jsonl"
models = ["random-1l"]
seeds = [0, 1, 2]
{executor}
[[distributions]]
spec = "{spec}"
targets = ["stop", "argmax in /^[A-Z]{{2,}}$/"]

[[estimators]]
name = "naive"

[[budgets]]
model_calls = 2000
"""


def experiment(folder: Path, executor: str = "") -> Experiment:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "exp.toml").write_text(textwrap.dedent(EXPERIMENT.format(spec=DEMO, executor=executor)))
    return plan(folder / "exp.toml", load_registry())


def comparable(row: ResultRow) -> dict[str, Any]:
    """A row without its timings (seconds, start time): what must equal between executors."""
    if row.estimate is None:
        assert row.error is not None
        return row.model_dump()
    estimate = row.estimate.model_dump(exclude={"seconds": True, "model_seconds": True, "provenance": {"started_at"}})
    return {**row.model_dump(exclude={"estimate"}), "estimate": estimate}


@pytest.fixture(scope="module")
def serial_rows(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    exp = experiment(tmp_path_factory.mktemp("serial-exp"))
    return {row.key: comparable(row) for row in run(exp, load_registry(), executor=SerialExecutor())}


def test_an_experiment_gives_the_serial_rows_and_resumes(executor: Executor, serial_rows: dict[str, Any],
                                                         tmp_path: Path) -> None:
    exp = experiment(tmp_path)
    assert len(exp.jobs) == len(serial_rows) == 6
    first = list(run(dataclasses.replace(exp, jobs=exp.jobs[:2]), load_registry(), executor=executor))
    assert len(first) == 2  # the driver "killed" after two rows; the rerun resumes with the other four
    rest = list(run(exp, load_registry(), executor=executor))
    assert len(rest) == 4 and {r.key for r in first}.isdisjoint(r.key for r in rest)
    rows = read_results(exp.output)
    assert len(rows) == 6 and {row.key: comparable(row) for row in rows} == serial_rows


def test_executor_keys_in_the_experiment_file_and_on_the_command_line(tmp_path: Path) -> None:
    exp = experiment(tmp_path, 'executor = "processes"\nworkers = 2\ncpus_per_worker = 1')
    assert (exp.executor.executor, exp.executor.workers) == ("processes", 2)
    assert exp.executor.merged(executor="serial", workers=None).executor == "serial"  # the command line wins
    with pytest.raises(LowprobError, match="needs --executor ray"):
        exp.executor.merged(address="auto").create()
    result = CliRunner().invoke(main, ["run", str(tmp_path / "exp.toml"), "--executor", "serial", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert len(read_results(exp.output)) == 6
    result = CliRunner().invoke(main, ["run", str(tmp_path / "exp.toml"), "--workers", "0"])
    assert result.exit_code == 2 and "--workers" in result.output
    (tmp_path / "bad.toml").write_text(EXPERIMENT.format(spec=DEMO, executor='executor = "threads"'))
    result = CliRunner().invoke(main, ["run", str(tmp_path / "bad.toml")])
    assert result.exit_code == 1 and "executor" in result.output and "'serial', 'processes' or 'ray'" in result.output


def test_cli_ground_truth_on_processes_equals_serial(tmp_path: Path, serial_file: GroundTruth) -> None:
    result = CliRunner().invoke(main, ["ground-truth", "run", DEMO, "--model", "random-1l", "--samples", "2^12",
                                       "--shard-size", "2^9", "--batch-size", "512", "--executor", "processes",
                                       "--workers", "2", "--output", str(tmp_path / "gt.json")])
    assert result.exit_code == 0, result.output
    assert GroundTruth.load(tmp_path / "gt.json").to_json()["checksum"] == serial_file.to_json()["checksum"]


EVENT = 'sample(2) contains {"0", "1", "2", "3"}'
"""An output event of random-1l on the demo distribution (about 1.3 % of inputs hit it)."""


def count_event(executor: Executor, demo: tuple[Any, SpecSource], output: Path, source: SpecSource | None = None,
                samples: int = SAMPLES) -> OutputGroundTruth:
    registry = load_registry()
    source = source or demo[1]
    compiled = compile_source(registry, source, model="random-1l", targets=[EVENT])
    event = compiled.spec.target(compiled.target_names.get(EVENT, EVENT))
    assert isinstance(event, OutputTarget)
    return count_output_ground_truth(executor, compiled.model, compiled.spec.distribution(None), demo[1].name, event,
                                     output, source=source, dist_name=None, target=EVENT, samples=samples,
                                     settings=SETTINGS, progress=False)


@pytest.fixture(scope="module")
def serial_event_file(demo: tuple[Any, SpecSource], tmp_path_factory: pytest.TempPathFactory) -> OutputGroundTruth:
    return count_event(SerialExecutor(), demo, tmp_path_factory.mktemp("serial-event") / "gt.json")


def test_output_ground_truth_equals_the_serial_run_and_resumes(executor: Executor, demo: tuple[Any, SpecSource],
                                                              serial_event_file: OutputGroundTruth,
                                                              tmp_path: Path) -> None:
    assert 0 < serial_event_file.hits < SAMPLES // 10 and serial_event_file.reservoir  # a count that can differ
    half = count_event(executor, demo, tmp_path / "gt.json", samples=SAMPLES // 2)  # a driver stopped half-way ...
    assert half.seeds == tuple(range(4))
    count_event(executor, demo, tmp_path / "gt.json")  # ... resumes from the file
    saved = OutputGroundTruth.load(tmp_path / "gt.json")
    assert saved.seeds == serial_event_file.seeds == tuple(range(8))
    assert saved.to_json()["checksum"] == serial_event_file.to_json()["checksum"]  # hits, seeds and reservoir


def test_a_killed_worker_output_shard_is_rerun_and_counted_once(demo: tuple[Any, SpecSource],
                                                                serial_event_file: OutputGroundTruth, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    spec = tmp_path / "demo.lp"
    spec.write_text(Path(DEMO).read_text())
    monkeypatch.setattr(gt_tasks, "ShardTask", DyingShard)
    runner = ExecutorSettings(executor="processes", workers=2, retries=2).create()
    total = count_event(runner, demo, tmp_path / "gt.json", SpecSource(spec.read_text(), str(spec), "demo"))
    assert spec.with_suffix(".killed").exists(), "the worker running shard 3 should have been killed"
    assert total.seeds == tuple(range(8)) and total.samples == SAMPLES
    assert OutputGroundTruth.load(tmp_path / "gt.json").to_json()["checksum"] == serial_event_file.to_json()["checksum"]


def test_cli_output_ground_truth_on_processes_equals_serial_and_merges(tmp_path: Path,
                                                                       serial_event_file: OutputGroundTruth) -> None:
    args = ["ground-truth", "run", DEMO, "--model", "random-1l", "--target", EVENT, "--shard-size", "2^9",
            "--batch-size", "512", "--executor", "processes", "--workers", "2", "--no-progress"]
    for first, out in ((0, "low.json"), (4, "high.json")):
        result = CliRunner().invoke(main, [*args, "--samples", "2^11", "--first-seed", str(first), "--output",
                                           str(tmp_path / out)])
        assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, [*args, "--samples", "2^11", "--output", str(tmp_path / "low.json"),
                                       "--dry-run"])
    assert result.exit_code == 0 and "4 shards of 512 wanted, 4 already there, 0 to count" in result.output
    merge = ["ground-truth", "merge", str(tmp_path / "high.json"), str(tmp_path / "low.json"), "--output"]
    result = CliRunner().invoke(main, [*merge, str(tmp_path / "gt.json")])
    assert result.exit_code == 0, result.output
    assert OutputGroundTruth.load(tmp_path / "gt.json").to_json()["checksum"] == serial_event_file.to_json()["checksum"]
    result = CliRunner().invoke(main, [*merge[:3], str(tmp_path / "gt.json"), "--output", str(tmp_path / "x.json")])
    assert result.exit_code == 1 and "share shard seeds [4, 5, 6, 7]" in result.output
    assert not (tmp_path / "x.json").exists()


def test_a_free_worker_gets_more_of_its_own_group_first() -> None:
    @dataclasses.dataclass(frozen=True)
    class Job:
        group: str
        n: int

        def run(self) -> None: ...

    queue = _GroupQueue([Job("a", 0), Job("b", 1), Job("a", 2), Job("b", 3)])
    assert queue.pop(None)[1] == Job("a", 0)
    assert queue.pop("b")[1] == Job("b", 1) and queue.pop("b")[1] == Job("b", 3)
    queue.put_back(1, Job("b", 1))  # a rerun goes first
    assert queue.pop("a")[1] == Job("a", 2) and queue.pop("a")[1] == Job("b", 1) and not queue


def tiny_reproduction(folder: Path, extra: str = "") -> rp.Reproduction:
    """tests/test_reproduce.py's tiny config (exact ground truth, a tuned method, a method one pair cannot run)."""
    folder.mkdir(parents=True, exist_ok=True)
    registry = load_registry()
    for name, text in REPRODUCE_SPECS.items():
        (folder / f"{name}.lp").write_text(text)
        exact_ground_truth(registry, name).save(folder / "gt" / "random-1l" / f"{name}.json")
    (folder / "cfg.toml").write_text(extra + REPRODUCE_CONFIG)
    return rp.plan(folder / "cfg.toml", registry, output=folder / "out")


@pytest.fixture(scope="module")
def serial_reproduction(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    repro = tiny_reproduction(tmp_path_factory.mktemp("serial-repro"))
    return {row.key: comparable(row) for _, row in rp.run(repro, load_registry(), repro.selected)}


@pytest.mark.parametrize(("executor", "stop"), [("processes", 24), ("ray", 0)], indirect=["executor"])
def test_reproduce_gives_the_serial_rows_and_resumes(executor: Executor, stop: int, tmp_path: Path,
                                                     serial_reproduction: dict[str, Any]) -> None:
    """Stopped after all 23 rows of the first phase and one of the second, the rerun chooses the temperature from
    the tuning rows in the file. Resuming is the driver's, the same on any executor: shown on processes (a stopped
    Ray run kills its busy actors, and starting new ones takes long on a 2-core machine)."""
    repro = tiny_reproduction(tmp_path)
    tuned = [job for job in repro.all_jobs(repro.selected) if repro.waits_for_tuning(job)]
    assert len(tuned) == 2 * 3 and len(serial_reproduction) == 26  # itgis's test rows on both pairs; alt's: a marker
    rows = rp.run(repro, load_registry(), repro.selected, executor=executor)
    assert len(list(itertools.islice(rows, stop))) == stop
    rows.close()  # the driver stops
    assert len(read_results(repro.results_path)) == stop
    args = ["reproduce", "--config", str(repro.path), "--output", str(repro.output), "--no-progress", "--executor",
            executor.settings.executor, "--workers", "2"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    rows = read_results(repro.results_path)
    assert len(repro.results_path.read_text().splitlines()) == len(rows) == 26  # the rerun wrote only the rest
    assert {row.key: comparable(row) for row in rows} == serial_reproduction
    assert len({r.temperature for r in rows if r.label == "itgis" and r.phase == "test"}) == 1


def test_reproduce_takes_the_executor_keys_from_its_config(tmp_path: Path) -> None:
    repro = tiny_reproduction(tmp_path, 'executor = "processes"\nworkers = 3\n')
    assert (repro.config.executor, repro.config.workers) == ("processes", 3)
    assert repro.config.merged(workers=2).model_dump() == ExecutorSettings(executor="processes", workers=2).model_dump()
    (tmp_path / "cfg.toml").write_text('executor = "threads"\n' + REPRODUCE_CONFIG)
    with pytest.raises(LowprobError, match="executor.*'serial', 'processes' or 'ray'"):
        rp.plan(tmp_path / "cfg.toml", load_registry())


def test_bench_on_processes_gives_the_serial_rows(tmp_path: Path) -> None:
    args = ["bench", "known-answer", "--estimator", "naive", "--estimator", "itgis", "--depth", "5", "--replicates",
            "2", "--budget-calls", "256", "--budget", "paper", "--temperatures", "0.5,2", "--tuning-replicates", "1"]
    rows = {}
    for kind in ("serial", "processes"):
        result = CliRunner().invoke(main, [*args, "--output", str(tmp_path / kind), "--executor", kind])
        assert result.exit_code == 0, result.output
        rows[kind] = {row.key: comparable(row) for row in read_results(tmp_path / kind / "results.jsonl")}
    assert len(rows["serial"]) >= 2 * 2 * 3 and rows["processes"] == rows["serial"]
