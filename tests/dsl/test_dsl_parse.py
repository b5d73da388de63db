"""Parsing: the syntax tree, source positions, the lexical details and the packaged grammar."""

from __future__ import annotations

from importlib.resources import files

from lowprob.dsl import (
    Branch,
    DistDef,
    Group,
    NameItem,
    Repeat,
    SetOp,
    SetRef,
    Spec,
    SpecialItem,
    TargetDef,
    TargetIs,
    TextItem,
    TokensDef,
    format_spec,
    parse,
)


def test_grammar_is_package_data() -> None:
    grammar = files("lowprob.dsl").joinpath("grammar.lark")
    assert grammar.is_file() and "set_expr" in grammar.read_text(encoding="utf-8")


def test_tree_and_positions() -> None:
    spec = parse('# hello\ndist main = BOS ("He" | x) * 2\n  tokens t = a | b & c', "x.lp")
    dist, tokens = spec.statements
    assert dist == DistDef(
        "main",
        (
            Branch(
                (
                    SpecialItem("BOS"),
                    Repeat(Group((Branch((TextItem("He"),)), Branch((NameItem("x"),)))), 2),
                )
            ),
        ),
    )
    assert (dist.line, dist.column) == (2, 6)
    repeat = dist.branches[0].items[1]
    assert (repeat.line, repeat.column) == (2, 28)  # at the '*'
    assert (repeat.item.line, repeat.item.column) == (2, 17)
    assert tokens == TokensDef("t", SetOp("|", SetRef("a"), SetOp("&", SetRef("b"), SetRef("c"))))
    assert (tokens.expr.line, tokens.expr.column) == (3, 16)  # at the '|'
    assert (spec.filename, spec.source.startswith("# hello")) == ("x.lp", True)


def test_comments_and_token_ids() -> None:
    spec = parse("target t = argmax == #12 # the id 12\n#comment\n# 3 more\n")
    assert spec == Spec((TargetDef("t", TargetIs(12)),))


def test_escapes() -> None:
    spec = parse(r'dist d = "q\"\\\n\t\x41"')
    assert spec.statements[0].branches[0].items[0] == TextItem('q"\\\n\tA')


def test_canonical_format() -> None:
    text = """
        tokens   t = ( a | b ) & (c - d) where (len>2 or len<1) and not endswith "x"
        dist main=BOS ("He"@0.3|"She"@0.7) t*4
        target hit = argmax in (t)
    """
    assert format_spec(parse(text)) == (
        'tokens t = (a | b) & (c - d) where (len > 2 or len < 1) and not endswith "x"\n'
        'dist main = BOS ("He" @ 0.3 | "She" @ 0.7) t * 4\n'
        "target hit = argmax in t\n"
    )


def test_positions_do_not_affect_equality() -> None:
    assert parse("tokens t = /a/") == parse("\n\n   tokens   t   =   /a/   ")
