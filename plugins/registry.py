"""What plugins register and how it is looked up: the per-plugin ``Registrar`` and the resulting
``Registry``.

Every registered name becomes an :class:`Entry` that remembers which plugin (and version) provided
it, so a name registered twice is an error naming both plugins, and estimates can record their
plugin's provenance.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from lowprob.core.errors import LowprobError, UnknownNameError
from lowprob.core.estimator import Capabilities, Estimator, EstimatorOptions
from lowprob.core.model import ModelAdapter
from lowprob.core.token_set import TokenSetResolver
from lowprob.plugins.fits import ExtrapolationFit
from lowprob.plugins.scoring import ScoreBuilder

ModelLoader = Callable[[], ModelAdapter]
"""A lazy model loader: called only when the model is first requested from a :class:`Registry`."""
SchemeLoader = Callable[[str], ModelAdapter]
"""Loads the model named ``scheme:target`` from ``target`` (a path, say), when first requested."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class PluginError(LowprobError):
    """A plugin that cannot be loaded, or registers something invalid or already taken."""


class Kind(StrEnum):
    """The kinds of things plugins register; the value is the plural key used in listings."""

    ESTIMATOR = "estimators"
    EXTRAPOLATION = "extrapolations"
    TOKEN_SET = "token_sets"
    DISTRIBUTION = "distributions"
    MODEL = "models"
    MODEL_SCHEME = "model_schemes"
    SCORE = "scores"

    @property
    def label(self) -> str:
        """The singular name used in messages (``token set``)."""
        return self.value[:-1].replace("_", " ")

    @classmethod
    def parse(cls, kind: Kind | str) -> Kind:
        """A kind from itself, its plural key (``token_sets``) or its label (``token set``)."""
        for member in cls:
            if kind in (member, member.value, member.label, member.label.replace(" ", "_")):
                return member
        raise UnknownNameError("kind", str(kind), [m.value for m in cls])


@dataclass(frozen=True)
class PluginMeta:
    """A loaded plugin: its name, version, where it came from and the hooks it implements."""

    name: str
    version: str
    source: str
    hooks: tuple[str, ...] = ()


@dataclass(frozen=True)
class Entry:
    """One registered name with the object behind it and the plugin that registered it.

    ``usage`` is set for token sets (how to call the resolver from the DSL); ``default`` for models.
    """

    kind: Kind
    name: str
    obj: Any
    description: str
    plugin: str
    version: str
    usage: str = ""
    default: bool = False


EntryTable = dict[Kind, dict[str, Entry]]


def empty_table() -> EntryTable:
    """A fresh table with one empty section per kind, shared by the registrars of one load."""
    return {kind: {} for kind in Kind}


class Registrar:
    """Passed to the hooks of one plugin; its ``add_*`` methods record names against it."""

    def __init__(self, plugin: PluginMeta, table: EntryTable) -> None:
        self.plugin = plugin
        self._table = table

    def _fail(self, message: str) -> PluginError:
        return PluginError(f"plugin {self.plugin.name!r}: {message}")

    def _add(self, kind: Kind, name: str, obj: Any, description: str, *, usage: str = "",
             default: bool = False) -> None:
        pattern = _IDENTIFIER if kind is Kind.TOKEN_SET else _NAME
        if not isinstance(name, str) or not pattern.fullmatch(name):
            raise self._fail(f"invalid {kind.label} name {name!r} (must match {pattern.pattern})")
        if not isinstance(description, str):
            raise self._fail(f"the description of {kind.label} {name!r} must be a string")
        section = self._table[kind]
        if name in section:
            first = section[name]
            raise PluginError(
                f"{kind.label} {name!r} is registered by two plugins: {first.plugin} "
                f"{first.version} and {self.plugin.name} {self.plugin.version}; block one with "
                "LOWPROB_BLOCK_PLUGINS")
        section[name] = Entry(kind, name, obj, description.strip(), self.plugin.name,
                              self.plugin.version, usage, default)

    def _require_callable(self, kind: Kind, name: str, obj: object) -> None:
        if not callable(obj):
            raise self._fail(f"{kind.label} {name!r} must be callable, got {type(obj).__name__}")

    def add_estimator(
        self, estimator: type[Estimator[Any]], *, description: str | None = None
    ) -> None:
        """Register an :class:`Estimator` subclass under its ``name``; the description defaults to
        the first line of its docstring."""
        if not (isinstance(estimator, type) and issubclass(estimator, Estimator)):
            raise self._fail(f"add_estimator needs an Estimator subclass, got {estimator!r}")
        name = getattr(estimator, "name", None)
        if not isinstance(getattr(estimator, "capabilities", None), Capabilities):
            raise self._fail(f"estimator {name or estimator.__name__!r} has no Capabilities")
        if description is None:
            description = (inspect.getdoc(estimator) or "").partition("\n")[0]
        self._add(Kind.ESTIMATOR, name, estimator, description)  # type: ignore[arg-type]

    def add_extrapolation(self, name: str, fit: ExtrapolationFit, *, description: str) -> None:
        """Register an activation-extrapolation fit (see :class:`ExtrapolationFit`)."""
        self._require_callable(Kind.EXTRAPOLATION, name, fit)
        self._add(Kind.EXTRAPOLATION, name, fit, description)

    def add_token_set(
        self, name: str, resolver: TokenSetResolver, *, description: str, usage: str
    ) -> None:
        """Register a token-set resolver the DSL calls as ``name(...)``; ``usage`` shows such a
        call."""
        self._require_callable(Kind.TOKEN_SET, name, resolver)
        self._add(Kind.TOKEN_SET, name, resolver, description, usage=usage)

    def add_distribution(self, name: str, spec: str, *, description: str) -> None:
        """Register a named spec text (DSL source) that users can refer to by ``name``."""
        if not isinstance(spec, str) or not spec.strip():
            raise self._fail(f"distribution {name!r} needs non-empty spec text")
        self._add(Kind.DISTRIBUTION, name, spec, description)

    def add_model(
        self, name: str, loader: ModelLoader, *, description: str = "", default: bool = False
    ) -> None:
        """Register a lazy model loader; it runs only when the model is requested, never at
        discovery."""
        self._require_callable(Kind.MODEL, name, loader)
        self._add(Kind.MODEL, name, loader, description, default=default)

    def add_score(self, name: str, builder: ScoreBuilder, *, description: str) -> None:
        """Register a score-function builder for the splitting estimators (see :class:`ScoreBuilder`)."""
        self._require_callable(Kind.SCORE, name, builder)
        self._add(Kind.SCORE, name, builder, description)

    def add_model_scheme(self, scheme: str, loader: SchemeLoader, *, description: str) -> None:
        """Make every model name ``scheme:target`` loadable, by ``loader(target)``, without registering it."""
        self._require_callable(Kind.MODEL_SCHEME, scheme, loader)
        self._add(Kind.MODEL_SCHEME, scheme, loader, description)


class Registry:
    """Everything the loaded plugins registered, with typed lookups that name the known choices on a
    miss."""

    def __init__(self, table: EntryTable, plugins: tuple[PluginMeta, ...]) -> None:
        self._table: Mapping[Kind, Mapping[str, Entry]] = {k: dict(table.get(k, {})) for k in Kind}
        self.plugins = plugins
        self._models: dict[str, ModelAdapter] = {}
        self._default_model = self._pick_default_model()

    def entries(self, kind: Kind | str) -> list[Entry]:
        """All entries of ``kind`` sorted by name (``kind`` as ``"estimators"``, ``"estimator"`` or
        a Kind)."""
        section = self._table[Kind.parse(kind)]
        return [section[name] for name in sorted(section)]

    def entry(self, kind: Kind | str, name: str) -> Entry:
        """The entry ``name`` of ``kind``; raises :class:`UnknownNameError` listing the known
        names."""
        parsed = Kind.parse(kind)
        section = self._table[parsed]
        if name not in section:
            raise UnknownNameError(parsed.label, name, list(section))
        return section[name]

    def estimator(self, name: str) -> type[Estimator[Any]]:
        """The estimator class registered as ``name``."""
        cls: type[Estimator[Any]] = self.entry(Kind.ESTIMATOR, name).obj
        return cls

    def create_estimator(
        self, name: str, options: EstimatorOptions | Mapping[str, Any] | None = None
    ) -> Estimator[Any]:
        """The estimator ``name`` with ``options`` validated (a :class:`LowprobError` names bad keys).

        An estimator whose constructor takes a ``registry`` keyword is given this registry, to look up the
        plugins its options name (``activation-extrapolation``'s ``fit``).
        """
        cls = self.estimator(name)
        if "registry" in inspect.signature(cls).parameters:
            return cls(options, registry=self)
        return cls(options)

    def score(self, name: str) -> ScoreBuilder:
        """The score-function builder registered as ``name``."""
        builder: ScoreBuilder = self.entry(Kind.SCORE, name).obj
        return builder

    def extrapolation(self, name: str) -> ExtrapolationFit:
        """The activation-extrapolation fit registered as ``name``."""
        fit: ExtrapolationFit = self.entry(Kind.EXTRAPOLATION, name).obj
        return fit

    def distribution_spec(self, name: str) -> str:
        """The spec text registered as ``name``."""
        spec: str = self.entry(Kind.DISTRIBUTION, name).obj
        return spec

    def token_set_resolvers(self) -> dict[str, TokenSetResolver]:
        """Every token-set resolver by the name the DSL calls it with."""
        return {name: entry.obj for name, entry in self._table[Kind.TOKEN_SET].items()}

    def model(self, name: str) -> ModelAdapter:
        """The model ``name``, loaded on first request and cached in this registry.

        A name ``scheme:target`` (``hf:/path/to/dir``) goes to the loader registered for ``scheme``.
        """
        if name not in self._models:
            scheme, colon, target = name.partition(":")
            entry = self.entry(Kind.MODEL_SCHEME, scheme) if colon else self.entry(Kind.MODEL, name)
            try:
                adapter = entry.obj(target) if colon else entry.obj()
            except LowprobError:
                raise
            except Exception as exc:
                raise PluginError(
                    f"model {name!r} from plugin {entry.plugin} {entry.version} failed to "
                    f"load: {type(exc).__name__}: {exc}"
                ) from exc
            if not isinstance(adapter, ModelAdapter):
                raise PluginError(
                    f"the loader of model {name!r} (plugin {entry.plugin}) returned "
                    f"{type(adapter).__name__}, not a ModelAdapter"
                )
            self._models[name] = adapter
        return self._models[name]

    @property
    def default_model_name(self) -> str:
        """The model used when none is named; raises :class:`PluginError` when no plugin marked
        one."""
        if self._default_model is None:
            known = ", ".join(sorted(self._table[Kind.MODEL])) or "(none registered)"
            raise PluginError(f"no plugin registered a default model; name one of: {known}")
        return self._default_model

    def _pick_default_model(self) -> str | None:
        """A third-party default overrides a built-in one; two defaults at the same level are an
        error."""
        builtin = {p.name for p in self.plugins if p.source == "builtin"}
        defaults = [e for e in self._table[Kind.MODEL].values() if e.default]
        preferred = [e for e in defaults if e.plugin not in builtin] or defaults
        if len(preferred) > 1:
            listing = " and ".join(f"{e.name!r} ({e.plugin} {e.version})" for e in preferred)
            raise PluginError(f"several default models: {listing}; block all but one plugin")
        return preferred[0].name if preferred else None
