"""Discovery: built-ins, entry points, blocking, environment switches, hook validation and tracing."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from importlib import metadata

import pytest

from lowprob.core.token_set import TokenSet
from lowprob.plugins import PluginError, load_registry, plugin_infos
from lowprob.plugins import manager as manager_module
from lowprob.plugins.builtin import BUILTIN_MODULES


def _add_vocab_copy(registrar):  # type: ignore[no-untyped-def]
    registrar.add_token_set("everything", lambda vocab: TokenSet.of(range(vocab.size)),
                            description="every id", usage="everything()")


@pytest.fixture
def fake_entry_point(monkeypatch: pytest.MonkeyPatch, plugin):  # type: ignore[no-untyped-def]
    """An entry point ``fake`` in the ``lowprob`` group whose module registers ``everything``."""
    module = plugin("fake_lowprob_plugin", register_token_sets=_add_vocab_copy)
    monkeypatch.setitem(sys.modules, "fake_lowprob_plugin", module)
    point = metadata.EntryPoint(name="fake", value="fake_lowprob_plugin", group="lowprob")
    real = metadata.entry_points

    def entry_points(**selection):  # type: ignore[no-untyped-def]
        if selection == {"group": "lowprob"}:
            return metadata.EntryPoints([point])
        return real(**selection)

    monkeypatch.setattr(metadata, "entry_points", entry_points)
    return point


def test_builtins_are_named_after_their_modules() -> None:
    names = [info.name for info in plugin_infos(load_registry(entry_points=False))]
    assert names == [f"lowprob.{module.rpartition('.')[2]}" for module in BUILTIN_MODULES]


def test_plugin_infos_are_json_serialisable_and_say_what_each_provides() -> None:
    infos = {i.name: i.model_dump() for i in plugin_infos(load_registry(entry_points=False))}
    json.dumps(list(infos.values()))
    models = ["lowprob-1l", "lowprob-2l", "lowprob-4l", "random-1l", "random-2l"]
    assert infos["lowprob.models"]["provides"] == {"models": models}
    assert infos["lowprob.naive"]["hooks"] == ["register_estimators"]
    assert infos["lowprob.naive"]["version"] == metadata.version("lowprob")


def test_entry_point_plugins_are_loaded(fake_entry_point) -> None:  # type: ignore[no-untyped-def]
    registry = load_registry()
    assert registry.entry("token set", "everything").plugin == "fake"
    assert load_registry(entry_points=False).token_set_resolvers().keys() == {"vocab", "specials",
                                                                             "freq"}


def test_disable_entry_points_env(fake_entry_point, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("LOWPROB_DISABLE_ENTRYPOINTS", "1")
    assert "everything" not in load_registry().token_set_resolvers()


@pytest.mark.parametrize("blocked", ["lowprob.distributions", "distributions",
                                     "lowprob.plugins.builtin.distributions"])
def test_block_builtins_by_any_of_their_names(blocked: str) -> None:
    full = {e.name for e in load_registry(entry_points=False).entries("distributions")
            if e.plugin == "lowprob.distributions"}
    registry = load_registry(entry_points=False, block=[blocked])
    left = {e.name for e in registry.entries("distributions")}
    assert "caps" in full and not full & left  # other plugins' distributions (lowprob.planted) stay
    assert "lowprob.distributions" not in [p.name for p in registry.plugins]


def test_block_env_var(fake_entry_point, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("LOWPROB_BLOCK_PLUGINS", " fake , lowprob.naive")
    registry = load_registry()
    assert "everything" not in registry.token_set_resolvers()
    assert "naive" not in [e.name for e in registry.entries("estimators")]


def test_blocked_plugins_are_never_imported(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(manager_module, "BUILTIN_MODULES", (*BUILTIN_MODULES, "lowprob.no_such"))
    with pytest.raises(PluginError, match="built-in plugin module lowprob.no_such could not be "
                                          "imported: ModuleNotFoundError"):
        load_registry(entry_points=False)
    load_registry(entry_points=False, block=["no_such"])


def test_broken_entry_point_is_a_clear_error(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    point = metadata.EntryPoint(name="broken", value="no_such_module_xyz", group="lowprob")
    monkeypatch.setattr(metadata, "entry_points", lambda **_: metadata.EntryPoints([point]))
    with pytest.raises(PluginError, match="plugin 'broken' .* could not be loaded"):
        load_registry()


def test_misspelled_hookimpl_is_an_error(plugin) -> None:  # type: ignore[no-untyped-def]
    typo = plugin("typo", register_estimator=lambda registrar: None)
    with pytest.raises(PluginError) as info:
        load_registry(entry_points=False, extra_plugins=[typo])
    message = str(info.value)
    assert "plugin 'typo'" in message and "register_estimator" in message
    assert "register_estimators, register_extrapolations" in message


def test_hookimpl_with_wrong_arguments_is_an_error(plugin) -> None:  # type: ignore[no-untyped-def]
    wrong = plugin("wrong", register_models=lambda reg: None)
    with pytest.raises(PluginError, match="plugin 'wrong' is invalid"):
        load_registry(entry_points=False, extra_plugins=[wrong])


def test_exception_inside_a_hook_names_plugin_and_hook(plugin) -> None:  # type: ignore[no-untyped-def]
    def register_models(registrar):  # type: ignore[no-untyped-def]
        raise KeyError("oops")

    with pytest.raises(PluginError, match="plugin 'explodes' failed in register_models: KeyError"):
        load_registry(entry_points=False, extra_plugins=[plugin("explodes",
                                                                register_models=register_models)])


def test_the_same_plugin_twice_is_an_error(plugin) -> None:  # type: ignore[no-untyped-def]
    once = plugin("once", register_token_sets=_add_vocab_copy)
    with pytest.raises(PluginError, match="register it once"):
        load_registry(entry_points=False, extra_plugins=[once, once])


def test_each_load_is_independent(plugin) -> None:  # type: ignore[no-untyped-def]
    extra = plugin("extra", register_token_sets=_add_vocab_copy)
    assert "everything" in load_registry(entry_points=False, extra_plugins=[extra]).token_set_resolvers()
    assert "everything" not in load_registry(entry_points=False).token_set_resolvers()


def test_trace_switch_prints_hook_calls(monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    load_registry(entry_points=False)
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("LOWPROB_TRACE_PLUGINS", "1")
    load_registry(entry_points=False)
    err = capsys.readouterr().err
    for hook in ("register_estimators", "register_models", "register_token_sets",
                 "register_distributions"):
        assert hook in err


def test_discovery_loads_no_weights_and_is_fast() -> None:
    """In a fresh interpreter: loading the registry imports no TransformerLens and loads no model."""
    script = textwrap.dedent("""
        import sys, time
        t0 = time.perf_counter()
        from lowprob.plugins import load_registry
        registry = load_registry(entry_points=False)
        elapsed = time.perf_counter() - t0
        assert registry.entries("models"), "no models registered"
        assert "transformer_lens" not in sys.modules, "discovery imported transformer_lens"
        assert not registry._models, "discovery loaded a model"
        print(elapsed)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout) < 10.0


def test_extra_plugin_objects_may_be_instances() -> None:
    class Specs:
        __version__ = "3"

        def register_distributions(self, registrar):  # type: ignore[no-untyped-def]
            registrar.add_distribution("tiny", "dist main = BOS", description="just BOS")

    from lowprob.plugins import hookimpl
    Specs.register_distributions = hookimpl(Specs.register_distributions)  # type: ignore[method-assign]
    entry = load_registry(entry_points=False, extra_plugins=[Specs()]).entry("distribution", "tiny")
    assert (entry.plugin, entry.version) == ("Specs", "3")
