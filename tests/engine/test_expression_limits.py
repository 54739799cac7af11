"""Bounded expressions: a hostile expression or template fails with `expression_limit` (work,
time or result size) instead of freezing the process, and ordinary expressions evaluate exactly
as JMESPath says."""
from __future__ import annotations

import jmespath
import orjson
import pytest

from app.engine.steps import branch, terminate, transform
from app.workflows.expressions import Budget, ExpressionLimit, Limits
from app.workflows.templates import evaluate, render

DOUBLING = "input.v" + " | [@,@]" * 26  # the 215-character expression of issue 12
SMALL = Limits(max_steps=10_000, max_seconds=30, max_result_bytes=10_000)


def ctx(**input_) -> dict:
    return {"input": input_, "steps": {}, "run": {"id": "r"}, "secrets": {}}


def doubled(n: int, leaf=1):
    v = leaf
    for _ in range(n):
        v = [v, v]
    return v


def test_ordinary_expressions_evaluate_as_jmespath_says():
    data = ctx(items=[{"sku": "a", "price": 2, "tags": ["x"]}, {"sku": "b", "price": 5, "tags": []}], n=42,
               name="order-1", nested={"a": {"b": [1, 2, 3]}})
    for expr in ["sum(input.items[].price)", "input.items[?price > `3`].sku", "input.n > `10`",
                 "{total: sum(input.items[].price), first: input.items[0].sku}", "input.items[*].tags[]",
                 "sort_by(input.items, &price)[-1].sku", "join('-', input.items[].sku)", "input.nested.a.b[1:]",
                 "to_string(input.nested)", "contains(input.items[].sku, 'b')", "input.items == input.items",
                 "max_by(input.items, &price).sku", "keys(input) | sort(@)", "map(&price, input.items)",
                 "merge(input.nested, {c: `1`})", "input.missing || 'default'", "!input.n", "reverse(input.name)",
                 "input.*.a.b | [0]", "length(@)", "type(input.n)", "not_null(input.x, input.n)"]:
        assert evaluate(expr, data) == jmespath.search(expr, data), expr


def test_a_doubling_expression_fails_on_its_logical_size_without_being_expanded():
    with pytest.raises(ExpressionLimit, match="335,544,317 bytes exceeds the limit of 4,194,304"):
        evaluate(DOUBLING, ctx(v=1), Budget(Limits(max_result_bytes=4 * 1024 * 1024)))
    outcome = transform.execute({"expression": DOUBLING}, ctx(v=1))
    assert outcome.status == "failed" and outcome.error["type"] == "expression_limit"
    assert outcome.output is None


def test_logical_size_is_the_serialized_size_of_shared_values():
    shared = {"k": ["abc", True, None, False], "é": "ü"}
    for value in [doubled(12, "xy"), [shared, [shared, {"x": shared}], []], {}, [], "plain", [[]]]:
        assert Budget(SMALL).measure(value)[0] == len(orjson.dumps(value)), value
    assert Budget(SMALL).measure(doubled(100))[1] == 2 ** 101 - 1  # nodes, counted without expanding


def test_interpreter_work_is_bounded_when_data_is_really_materialized():
    # Each flatten really doubles the list: bounded by elements produced, not by result size.
    expr = "input.v" + " | [@,@]" * 22 + " | []" * 21
    with pytest.raises(ExpressionLimit, match="evaluation steps"):
        evaluate(expr, ctx(v=1), Budget(Limits(max_steps=50_000, max_seconds=30)))
    with pytest.raises(ExpressionLimit, match="evaluation steps"):
        evaluate("input.items[*].[@, @, @]", ctx(items=list(range(5000))), Budget(SMALL))
    with pytest.raises(ExpressionLimit, match="evaluation steps"):
        evaluate("input.items[2:]", ctx(items=list(range(20_000))), Budget(SMALL))


def test_wall_time_is_bounded():
    expr = "input.items[*].[@, @, @, @][][][]"
    with pytest.raises(ExpressionLimit, match=r"exceeded 0\.001 s"):
        evaluate(expr, ctx(items=list(range(100_000))),
                 Budget(Limits(max_steps=10**12, max_seconds=0.001, max_result_bytes=10**15)))


@pytest.mark.parametrize("expr", [
    "to_string(input.big)",  # json.dumps would expand 2^40 leaves
    "join('', input.strings)",  # one string repeated a million times
    "input.big == input.big2",  # two distinct trees sharing sub-objects: == expands them
    "contains(input.deep_list, input.big2)",
    "sort(input.numbers)",
    "sort_by(input.records, &n)",
])
def test_functions_and_comparisons_that_would_expand_are_charged_before_they_run(expr):
    data = ctx(big=doubled(40), big2=doubled(40), strings=["x" * 100] * 1_000_000, numbers=list(range(20_000)),
               records=[{"n": i} for i in range(20_000)], deep_list=[doubled(40)] * 3)
    with pytest.raises(ExpressionLimit):
        evaluate(expr, data, Budget(SMALL))


def test_a_render_shares_one_budget_across_all_its_templates():
    ten_kb = "x" * 10_000
    config = {"headers": {f"h{i}": "{{ input.s }}" for i in range(10)}}
    assert render(config, ctx(s=ten_kb), Budget(Limits(max_result_bytes=200_000)))["headers"]["h9"] == ten_kb
    with pytest.raises(ExpressionLimit, match="exceeds the limit"):
        render(config, ctx(s=ten_kb), Budget(Limits(max_result_bytes=50_000)))
    with pytest.raises(ExpressionLimit):
        render({"body": "prefix {{ to_string(input.big) }}"}, ctx(big=doubled(40)))


def test_rendered_values_are_storable():
    assert render({"a": '{{ `"a\\u0000b"` }}', "b": 'x {{ `"\\u0000"` }} y', "c": "{{ `{\"k\\u0000\": 1}` }}"},
                  ctx()) == {"a": "a\\u0000b", "b": "x \\u0000 y", "c": {"k\\u0000": 1}}


def test_steps_fail_with_a_typed_error_and_never_raise():
    assert branch.execute({"condition": DOUBLING}, ctx(v=1)).error["type"] == "expression_limit"
    assert branch.execute({"condition": "input.v == `1`"}, ctx(v=1)).output == {"result": True}
    t = terminate.execute({"status": "failed", "message": "{{ to_string(input.big) }}"}, ctx(big=doubled(40)))
    assert t.status == "failed" and t.error["type"] == "expression_limit"
    t = terminate.execute({"status": "failed", "message": 'bad {{ `"\\u0000"` }}'}, ctx())
    assert t.error == {"type": "terminated", "message": "bad \\u0000"}
    nan = transform.execute({"expression": "to_number('NaN')"}, ctx())
    assert (nan.status, nan.error["type"]) == ("failed", "unstorable_output")
    huge = transform.execute({"expression": "`123456789012345678901234567890`"}, ctx())
    assert huge.error["type"] == "unstorable_output"
    # A type error quotes the offending value; the message is stored with NUL escaped.
    bad = transform.execute({"expression": 'abs(`"a\\u0000b"`)'}, ctx())
    assert bad.error["type"] == "expression_error" and "\x00" not in bad.error["message"]
    assert "a\\u0000b" in bad.error["message"]


def test_a_template_error_carries_a_storable_message():
    from app.workflows.templates import TemplateError

    with pytest.raises(TemplateError) as info:
        render({"url": 'https://x.test/{{ abs(`"a\\u0000b"`) }}'}, ctx())
    assert "\x00" not in str(info.value) and "a\\u0000b" in str(info.value)
    t = terminate.execute({"status": "succeeded", "message": '{{ abs(`"\\u0000"`) }}'}, ctx())
    assert t.error["type"] == "expression_error" and "\x00" not in t.error["message"]


def test_constant_time_functions_are_not_charged_for_the_size_of_their_arguments():
    data = ctx(items=list(range(50_000)))
    assert evaluate("length(input.items)", data, Budget(SMALL)) == 50_000
    assert evaluate("type(input.items)", data, Budget(SMALL)) == "array"
    with pytest.raises(ExpressionLimit):
        evaluate("sum(input.items)", data, Budget(SMALL))
