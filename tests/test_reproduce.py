"""`lowprob reproduce` end to end on tiny exhaustively counted problems: rows, tables, figures, resuming, errors."""

import json

import pytest
from click.testing import CliRunner

from lowprob import read_results
from lowprob import reproduce as rp
from lowprob.api import SpecSource, compile_source
from lowprob.cli import main
from lowprob.core.errors import LowprobError
from lowprob.ground_truth import GroundTruth
from lowprob.plugins import Registry, load_registry
from lowprob.plugins.testing import argmax_probabilities

SPECS = {
    "tiny": 'tokens small = /^[0-9a-f]$/\ndist main = BOS small small small\n',  # 4096 equally likely inputs
    "alt": 'tokens small = /^[0-9a-f]$/\ndist main = BOS ("a" small | "b" "c") small\n',  # not factorized
}
CONFIG = """
name = "tiny"
output = "out"
ground_truth = "gt"
models = ["random-1l"]
distributions = ["tiny.lp", "alt.lp"]
[targets]
n_test = 3
n_tuning = 2
band = [0.002, 0.0147]
tuning_band = [0.0147, 0.3]
[budget]
scale = 0.001953125
[temperatures]
values = [0.5, 2.0]
[[methods]]
name = "naive"
[[methods]]
name = "itgis"
scale_options = { batch_size = 0.5 }
[[methods]]
name = "gld"
[[methods]]
name = "optimal-constant"
"""


def _ground_truth(registry: Registry, name: str) -> GroundTruth:
    """Exact argmax counts as if 4096 inputs were drawn in exact proportion (every input is a multiple of 1/4096)."""
    compiled = compile_source(registry, SpecSource(SPECS[name], f"<{name}>", name), model="random-1l")
    dist = compiled.spec.distribution(None)
    samples = 4096
    counts = (argmax_probabilities(compiled.model, dist) * samples).round().long().numpy()
    return GroundTruth("random-1l", name, dist.content_hash, compiled.model.d_vocab, samples, (0,), counts)


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_registry()


@pytest.fixture(scope="module")
def done(tmp_path_factory: pytest.TempPathFactory, registry: Registry) -> rp.Reproduction:
    """The tiny config planned and run once (shared by the tests below)."""
    root = tmp_path_factory.mktemp("repro")
    for name, text in SPECS.items():
        (root / f"{name}.lp").write_text(text)
        _ground_truth(registry, name).save(root / "gt" / "random-1l" / f"{name}.json")
    (root / "cfg.toml").write_text(CONFIG)
    repro = rp.plan(root / "cfg.toml", registry, output=root / "out")
    list(rp.run(repro, registry, repro.selected))
    rp.write_report(repro)
    return repro


def _pending(repro: rp.Reproduction) -> int:
    return len(repro.open().pending(repro.all_jobs(repro.pairs)))


def test_rows_tables_and_figures_are_written(done: rp.Reproduction) -> None:
    rows = read_results(done.results_path)
    tiny = [r for r in rows if r.distribution == "tiny"]
    assert len([r for r in tiny if r.phase == "tune"]) == 2 * 2  # itgis × 2 temperatures × 2 tokens
    assert len([r for r in tiny if r.phase == "test"]) == 4 * 3
    assert all(r.estimate is not None for r in rows if r.phase != "unsupported")
    chosen = {r.temperature for r in tiny if r.phase == "test" and r.label == "itgis"}
    assert len(chosen) == 1 and chosen <= {0.5, 2.0}
    alt = [r for r in rows if r.distribution == "alt"]
    assert [r.label for r in alt if r.phase == "unsupported"] == ["itgis"]
    assert "independent positions" in next(str(r.error) for r in alt if r.phase == "unsupported")
    test = next(r for r in tiny if r.phase == "test" and r.label == "naive")
    assert test.protocol is not None and test.protocol.p_true == done.pairs[0].p(test.protocol.token or 0)

    losses = json.loads((done.output / "losses.json").read_text())
    pair = next(p for p in losses["pairs"] if p["distribution"] == "tiny")
    assert pair["methods"]["naive"]["n"] == 3 and pair["methods"]["itgis"]["temperature"] in (0.5, 2.0)
    assert set(pair["methods"]["itgis"]["tuning"]) == {"0.5", "2"}
    assert pair["methods"]["itgis"]["tuning"]["0.5"]["failures"] >= 0
    constant = pair["methods"]["optimal-constant"]
    p_tuning = [done.pairs[0].p(t) for t in pair["tuning_tokens"]]
    assert constant["options"]["value"] == pytest.approx(sum(p_tuning) / len(p_tuning))
    table = (done.output / "losses.md").read_text()
    assert "| distribution | naive | itgis | gld | optimal-constant |" in table
    assert "| alt |" in table and "n/a" in table
    for name in ("scatter-naive", "scatter-itgis", "losses"):
        stem = done.output / "figures" / "random-1l" / name
        assert stem.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
        assert "<svg" in stem.with_suffix(".svg").read_text()


def test_rerun_skips_done_rows_and_resumes_after_a_kill(done: rp.Reproduction, registry: Registry) -> None:
    again = rp.plan(done.path, registry, output=done.output)
    assert _pending(again) == 0
    assert list(rp.run(again, registry, again.pairs)) == []
    path = done.results_path
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-2]) + lines[-2][:15])  # killed while writing the second-to-last row
    assert _pending(again) == 2
    assert len(list(rp.run(again, registry, again.pairs))) == 2
    assert len(path.read_bytes().splitlines()) == len(lines)


def test_cli_reproduce_reports_and_filters(done: rp.Reproduction) -> None:
    args = ["reproduce", "--config", str(done.path), "--output", str(done.output), "--no-progress"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "0 estimates to run" in result.output and "losses.md" in result.output
    result = CliRunner().invoke(main, [*args, "--only-model", "lowprob-4l"])
    assert result.exit_code == 1 and "model 'lowprob-4l' is not in" in result.output
    result = CliRunner().invoke(main, ["reproduce", "--quick", "--config", str(done.path)])
    assert result.exit_code == 1 and "not both" in result.output


@pytest.mark.parametrize(("old", "new", "message"), [
    ('name = "gld"', 'name = "no-such"', "unknown estimator 'no-such'; known estimators: .*itgis.*naive"),
    ('name = "gld"', 'name = "gld"\noptionz = 1', "methods.2.optionz: unknown key 'optionz'"),
    ("batch_size = 0.5", "chains = 0.5", "scale_options names 'chains', not an option of estimator 'itgis'"),
    ('name = "gld"', 'name = "gld"\noptions = { batch = 3 }', "invalid options for estimator 'gld'"),
    ('models = ["random-1l"]', 'models = ["nope-1l"]', "unknown model 'nope-1l'; known models:"),
    ('models = ["random-1l"]', 'models = ["random-2l"]',
     "no shipped ground truth for model 'random-2l' on distribution 'tiny'; available: random-1l/alt, random-1l/tiny"),
    ("tuning_band = [0.0147, 0.3]", "", "give both 'band' and 'tuning_band'"),
    ('name = "gld"', 'name = "mhis"', "less than one step needs"),
])
def test_bad_configs_fail_clearly(done: rp.Reproduction, registry: Registry, old: str, new: str,
                                  message: str) -> None:
    assert old in CONFIG
    path = done.path.parent / "bad.toml"
    path.write_text(CONFIG.replace(old, new, 1))
    with pytest.raises(LowprobError, match=message):
        rp.plan(path, registry)


def test_only_model_needs_ground_truth_only_for_the_pairs_it_runs(done: rp.Reproduction, registry: Registry) -> None:
    path = done.path.parent / "two-models.toml"
    path.write_text(CONFIG.replace('models = ["random-1l"]', 'models = ["random-1l", "random-2l"]'))
    repro = rp.plan(path, registry, only_model="random-1l", only_distribution="tiny")
    assert [(p.model, p.distribution) for p in repro.selected] == [("random-1l", "tiny")]
    assert [p.distribution for p in repro.pairs] == ["tiny", "alt"]
    with pytest.raises(LowprobError, match="no shipped ground truth for model 'random-2l'"):
        rp.plan(path, registry, only_model="random-2l")


def test_a_pair_without_tokens_in_its_band_is_skipped_and_reported(done: rp.Reproduction,
                                                                   registry: Registry) -> None:
    path = done.path.parent / "empty-band.toml"
    path.write_text(CONFIG.replace("band = [0.002, 0.0147]", "band = [0.6, 0.7]").replace('output = "out"',
                                                                                         'output = "out-empty"'))
    repro = rp.plan(path, registry, output=done.path.parent / "out-empty")
    assert all(p.skipped and "no test token has a ground truth in [0.6, 0.7)" in p.skipped for p in repro.pairs)
    assert _pending(repro) == 0 and "no test token" in rp.describe_plan(repro, repro.pairs, repro.open())
    rp.write_report(repro)
    assert "no test token" in (repro.output / "losses.md").read_text()
    assert "no test token" in json.loads((repro.output / "losses.json").read_text())["pairs"][0]["skipped"]


def test_a_one_value_grid_fixes_the_temperature_without_tuning_rows(done: rp.Reproduction,
                                                                    registry: Registry) -> None:
    path = done.path.parent / "fixed.toml"
    path.write_text(CONFIG.replace("values = [0.5, 2.0]", "values = [1.0]"))
    repro = rp.plan(path, registry)
    jobs = repro.jobs(repro.pairs[0])
    assert {job.spec.phase for job in jobs} == {"test"} and len(jobs) == 4 * 3


def test_missing_config_and_shipped_configs_parse() -> None:
    with pytest.raises(LowprobError, match="does not exist"):
        rp.read_config("/nonexistent/reproduce.toml")
    for quick in (False, True):
        config = rp.read_config(rp.shipped_config(quick))
        assert len(config.distributions) == 8


@pytest.mark.parametrize("quick", [True, False])
def test_every_method_of_the_shipped_configs_fits_its_scaled_budget(quick: bool, tmp_path) -> None:
    # An estimator whose first step grows (new options with defaults) must scale them in the shipped configs;
    # planning fails with "less than one step needs" otherwise.
    repro = rp.plan(rp.shipped_config(quick), load_registry(), output=tmp_path, only_model="lowprob-1l",
                    only_distribution="hex")
    planned = {method.estimator for pair in repro.selected for method in pair.methods}
    assert planned == {m.name for m in rp.read_config(rp.shipped_config(quick)).methods}
