"""lowprob.dsl: the spec language for token sets, input distributions and targets.

``parse`` turns text into a syntax tree, ``format_spec`` turns it back, ``compile_spec`` turns
it into core objects for one vocabulary (plugins' token-set resolvers are injected);
``load_spec`` does both; ``read_spec_file`` reads a spec file's text.
"""

from lowprob.dsl.compiler import CompiledSpec, compile_spec, load_spec
from lowprob.dsl.errors import DslError
from lowprob.dsl.formatter import format_spec
from lowprob.dsl.parser import parse
from lowprob.dsl.spec_files import path_exists, read_spec_file
from lowprob.dsl.syntax import (
    AffixFilter,
    BoolFilter,
    Branch,
    DistDef,
    ExplicitSet,
    Group,
    LenFilter,
    MatchesFilter,
    NameItem,
    Node,
    NotFilter,
    NumberArg,
    RegexSet,
    Repeat,
    SetCall,
    SetEntry,
    SetItem,
    SetOp,
    SetRef,
    Spec,
    SpecialItem,
    StringArg,
    TargetDef,
    TargetIn,
    TargetIs,
    TextItem,
    TokensDef,
    UniformItem,
    WeightedItem,
    Where,
)

__all__ = [
    "AffixFilter",
    "BoolFilter",
    "Branch",
    "CompiledSpec",
    "DistDef",
    "DslError",
    "ExplicitSet",
    "Group",
    "LenFilter",
    "MatchesFilter",
    "NameItem",
    "Node",
    "NotFilter",
    "NumberArg",
    "RegexSet",
    "Repeat",
    "SetCall",
    "SetEntry",
    "SetItem",
    "SetOp",
    "SetRef",
    "Spec",
    "SpecialItem",
    "StringArg",
    "TargetDef",
    "TargetIn",
    "TargetIs",
    "TextItem",
    "TokensDef",
    "UniformItem",
    "WeightedItem",
    "Where",
    "compile_spec",
    "format_spec",
    "load_spec",
    "parse",
    "path_exists",
    "read_spec_file",
]
