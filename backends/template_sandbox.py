"""A jinja2 sandbox that also bounds what a template may cost: time, loop iterations and value sizes.

jinja2's own sandbox stops a template from reaching Python's internals and caps `range()` (MAX_RANGE), but a
template is still free to loop for hours (`range` inside `range`), to allocate gigabytes in one expression
(`"x" * 3000000000`, `"x"|center(3000000000)`) or to double a string in a loop through a `namespace`.
Chat templates come with downloaded models and with Modelfiles anyone with an API key may create, so each
render gets a budget: a deadline, a number of loop iterations, and a size no value or output may exceed.

How it is enforced:
- every loop's iterable, every `~` concatenation and every list, tuple or dict literal are rewritten (on the
  template's syntax tree, before compilation) into calls of filters of ours, which check the deadline, count
  iterations and check sizes (of a container: what printing it would cost, shared items counted each time);
- every call (functions, methods, macros, `loop()`) and the operators `+ * ** %` go through the sandbox's
  `call` / `call_binop`, which check the deadline and refuse an operation whose result would be too large
  *before* computing it (a width, a repeat count, a replacement's growth), and check what comes back;
- the filters that can amplify their input (center, indent, format, replace, join, tojson) are wrapped the
  same way.
A legitimate chat template spends well under 10 ms and a few hundred iterations on a conversation.
"""

from __future__ import annotations

import re
import string
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace
from jinja2.visitor import NodeTransformer

BUDGET_VARIABLE = "__tandem_render_budget"
ITERATE_FILTER, CONCAT_FILTER = "tandem_bounded_iterable", "tandem_bounded_concat"
LITERAL_FILTER = "tandem_bounded_literal"
MAX_ITERATIONS = 1_000_000  # all loops of one render together
_REMEMBER_WEIGHT, _MAX_REMEMBERED = 64, 65536  # which weighed containers RenderBudget remembers
MAX_INT_BITS = 1 << 16  # big enough for any arithmetic a template does, small enough to stay instant
_WIDTH_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})
_DIGITS = re.compile(r"\d+")
_PRINTF_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d*)(?:\.(\*|\d*))?[hlL]?[a-zA-Z%]")


class TemplateBoundsError(jinja2.TemplateError):
    """The template went over its time, iteration or size budget."""


@dataclass(slots=True)
class RenderBudget:
    """What one render may still spend; lives in the render's variables, so concurrent renders (each on its
    own thread) never share one."""

    deadline: float  # time.monotonic()
    timeout_s: float
    max_chars: int
    iterations_left: int = MAX_ITERATIONS
    # id -> (value, weight) of the containers weighed so far; holding the value keeps its id from being reused
    _weights: dict[int, tuple[Any, int]] = field(default_factory=dict)

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise TemplateBoundsError(f"it ran for more than {self.timeout_s:g}s")

    def iterate(self) -> None:
        self.iterations_left -= 1
        if self.iterations_left < 0:
            raise TemplateBoundsError(f"its loops ran more than {MAX_ITERATIONS} iterations")
        self.tick()

    def check_size(self, size: int, what: str = "a value") -> None:
        if size > self.max_chars:
            raise TemplateBoundsError(f"{what} of {size} characters is over the limit of {self.max_chars}")

    def weigh(self, value: Any) -> int:
        """What printing the value would cost: a string's length, a container's items, shared or not (a list
        holding the same big list twice, nested 30 times, is small in memory but prints 2^30 times over)."""
        return self._weigh(value, {})[0]

    def _weigh(self, value: Any, namespaces: dict[int, int]) -> tuple[int, bool]:
        """(weight, whether it holds a namespace); `namespaces` remembers those of this one weighing only,
        since {% set ns.x = ... %} changes them, and a container that holds one is not remembered either."""
        if isinstance(value, str | bytes):
            return len(value), False
        if isinstance(value, int):
            return value.bit_length() // 3 + 1, False  # its decimal digits, a few more
        if isinstance(value, Namespace):
            if id(value) not in namespaces:
                self.tick()
                attributes = getattr(value, "_Namespace__attrs", {})
                parts = [*attributes, *attributes.values()]
                namespaces[id(value)] = 2 + sum(self._weigh(part, namespaces)[0] + 2 for part in parts)
            return namespaces[id(value)], True
        if not isinstance(value, list | tuple | dict | set | frozenset):
            return 24, False  # a float, none, a boolean, a macro: a few characters
        known = self._weights.get(id(value))
        if known is not None and known[0] is value:
            return known[1], False
        self.tick()
        items = [*value, *value.values()] if isinstance(value, dict) else value
        weights = [self._weigh(item, namespaces) for item in items]
        weight = 2 + sum(w + 2 for w, _ in weights)  # brackets, and a separator or quotes per item
        holds_namespace = any(held for _, held in weights)
        # remembering small ones would cost more than weighing them again; past the cap, a template that
        # nests shared containers runs into its deadline instead
        if not holds_namespace and weight >= _REMEMBER_WEIGHT and len(self._weights) < _MAX_REMEMBERED:
            self._weights[id(value)] = (value, weight)
        return weight, holds_namespace

    def check_result(self, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > MAX_INT_BITS:
            raise TemplateBoundsError(f"an integer of more than {MAX_INT_BITS} bits")
        self.check_size(self.weigh(value))
        return value

    def check_widths(self, *values: Any) -> None:
        """Integer arguments that are widths (of padding, of a `*` in a format)."""
        for value in values:
            if isinstance(value, int) and not isinstance(value, bool):
                self.check_size(value, "a width")

    def check_printf(self, template: str, arguments: Any) -> None:
        """`template % arguments`: the widths and precisions written in it, or passed for its `*`s."""
        specs = _PRINTF_SPEC.findall(template)
        for width, precision in specs:
            for part in (width, precision):
                if part.isdigit():
                    self.check_size(int(part) if len(part) < 12 else self.max_chars + 1, "a width")
        if any("*" in spec for pair in specs for spec in pair):
            values = arguments if isinstance(arguments, tuple | list) else (arguments,)
            self.check_widths(*values)

    def check_format(self, template: str, args: tuple, kwargs: dict) -> None:
        """`template.format(...)`: widths in its format specs, and any argument a nested `{}` may use."""
        try:
            fields = list(string.Formatter().parse(template))
        except ValueError:
            return  # format() will refuse it itself
        for _, _, spec, _ in fields:
            if not spec:
                continue
            if "{" in spec:
                self.check_widths(*args, *kwargs.values())
            for digits in _DIGITS.findall(spec):
                self.check_size(int(digits) if len(digits) < 12 else self.max_chars + 1, "a width")


def budget_of(context: Context) -> RenderBudget:
    # context.parent holds the render's own variables: a template's {% set %} cannot shadow them
    return context.parent[BUDGET_VARIABLE]


def _projected_replace(text: str, old: str, new: str, count: int = -1) -> int:
    hits = len(text) + 1 if old == "" else text.count(old)
    if count >= 0:
        hits = min(hits, count)
    return len(text) + hits * (len(new) - len(old))


def _projected_join(budget: RenderBudget, separator: str, items: list[Any]) -> int:
    return sum(map(budget.weigh, items)) + len(separator) * max(len(items) - 1, 0)


def _check_str_method(budget: RenderBudget, method: Any, args: tuple, kwargs: dict) -> list[Any] | None:
    """Refuses a str method call whose result would be too large; returns join's items, materialized."""
    name, text = getattr(method, "__name__", ""), method.__self__
    if name in _WIDTH_METHODS:
        budget.check_widths(*args, *kwargs.values())
    elif name == "format":
        budget.check_format(text, args, kwargs)
    elif name == "format_map" and args:
        budget.check_format(text, (), dict(args[0]) if isinstance(args[0], dict) else {})
    elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        budget.check_size(_projected_replace(text, *args[:3]))
    elif name == "join" and len(args) == 1:
        items = _bounded_list(budget, args[0])
        budget.check_size(_projected_join(budget, text, items))
        return items
    return None


def _bounded_list(budget: RenderBudget, iterable: Iterable[Any]) -> list[Any]:
    items = []
    for item in iterable:
        budget.iterate()
        items.append(item)
    return items


@jinja2.pass_context
def _bounded_iterable(context: Context, iterable: Any) -> Iterator[Any]:
    budget = budget_of(context)
    budget.tick()
    for item in iterable:
        budget.iterate()
        yield item


@jinja2.pass_context
def _bounded_literal(context: Context, value: Any) -> Any:
    return budget_of(context).check_result(value)


@jinja2.pass_context
def _bounded_concat(context: Context, parts: list[Any]) -> str:
    budget = budget_of(context)
    texts = [str(part) for part in parts]
    budget.check_size(sum(map(len, texts)))
    return "".join(texts)


def _bounded_filter(
    name: str, original: Callable[..., Any], check: Callable[[RenderBudget, Any, tuple, dict], None]
) -> Callable[..., Any]:
    passes = getattr(getattr(original, "jinja_pass_arg", None), "name", None)  # set by jinja2.pass_*

    @jinja2.pass_context  # also keeps jinja from running the filter at compile time on constant arguments
    def bounded(context: Context, value: Any, *args: Any, **kwargs: Any) -> Any:
        budget = budget_of(context)
        budget.tick()
        check(budget, value, args, kwargs)
        first = {"context": context, "eval_context": context.eval_ctx, "environment": context.environment}
        if passes in first:
            return budget.check_result(original(first[passes], value, *args, **kwargs))
        return budget.check_result(original(value, *args, **kwargs))

    bounded.__name__ = name
    bounded.tandem_bounded = True  # type: ignore[attr-defined]
    return bounded


def _check_center(budget: RenderBudget, value: Any, args: tuple, kwargs: dict) -> None:
    budget.check_widths(*args, *kwargs.values())


def _check_indent(budget: RenderBudget, value: Any, args: tuple, kwargs: dict) -> None:
    width = args[0] if args else kwargs.get("width", 4)
    text = str(value)
    if isinstance(width, int):
        budget.check_size(len(text) + width * (text.count("\n") + 1))
    else:
        budget.check_size(len(text) + len(str(width)) * (text.count("\n") + 1))


def _check_format(budget: RenderBudget, value: Any, args: tuple, kwargs: dict) -> None:
    budget.check_printf(str(value), kwargs or args)  # jinja's format filter is `value % (kwargs or args)`


def _check_replace(budget: RenderBudget, value: Any, args: tuple, kwargs: dict) -> None:
    if len(args) >= 2:
        count = args[2] if len(args) > 2 else kwargs.get("count")
        budget.check_size(_projected_replace(str(value), str(args[0]), str(args[1]), count or -1))


def _check_join(budget: RenderBudget, value: Any, args: tuple, kwargs: dict) -> None:
    items = [value] if isinstance(value, str) else list(value) if isinstance(value, list | tuple) else []
    separator = args[0] if args else kwargs.get("d", "")
    budget.check_size(_projected_join(budget, str(separator), items))


def _check_tojson(budget: RenderBudget, value: Any, args: tuple, kwargs: dict) -> None:
    """jinja's tojson(indent) and Hugging Face's (ensure_ascii, indent, separators, sort_keys): an indent
    and the separators are repeated for each item."""
    per_item = 1
    for option in (*args, *kwargs.values()):
        if isinstance(option, int) and not isinstance(option, bool):
            per_item += max(option, 0)
        elif isinstance(option, str):
            per_item += len(option)
        elif isinstance(option, tuple | list):
            per_item += sum(len(part) for part in option if isinstance(part, str))
    budget.check_size(budget.weigh(value) * per_item)


_AMPLIFIERS = {"center": _check_center, "indent": _check_indent, "format": _check_format,
               "replace": _check_replace, "join": _check_join, "tojson": _check_tojson}  # fmt: skip


class _GuardLoopsAndConcats(NodeTransformer):
    """Routes every loop's iterable, every `~` and every list, tuple and dict literal through our filters."""

    def __init__(self, environment: jinja2.Environment) -> None:
        self.environment = environment

    def _filter(self, node: nodes.Node, name: str) -> nodes.Filter:
        wrapped = nodes.Filter(node, name, [], [], None, None, lineno=node.lineno)
        wrapped.set_environment(self.environment)
        return wrapped

    def visit_For(self, node: nodes.For) -> nodes.For:
        self.generic_visit(node)
        node.iter = self._filter(node.iter, ITERATE_FILTER)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Filter:
        self.generic_visit(node)
        parts = nodes.List(node.nodes, lineno=node.lineno)
        return self._filter(parts, CONCAT_FILTER)

    def _literal(self, node: nodes.List | nodes.Tuple | nodes.Dict) -> nodes.Expr:
        self.generic_visit(node)
        if isinstance(node, nodes.Tuple) and node.ctx != "load":
            return node  # an assignment's target ({% set a, b = ... %}), not a value
        return self._filter(node, LITERAL_FILTER)

    visit_List = visit_Tuple = visit_Dict = _literal


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """ImmutableSandboxedEnvironment plus the render budget; see the module's docstring."""

    intercepted_binops = frozenset({"+", "*", "**", "%"})  # also keeps jinja from folding them at compile

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.filters[ITERATE_FILTER] = _bounded_iterable
        self.filters[CONCAT_FILTER] = _bounded_concat
        self.filters[LITERAL_FILTER] = _bounded_literal

    def compile_guarded(self, source: str) -> jinja2.Template:
        # the amplifying filters are wrapped now, so that ones set after construction (tojson) are too
        for name, check in _AMPLIFIERS.items():
            original = self.filters.get(name)
            if original is not None and not getattr(original, "tandem_bounded", False):
                self.filters[name] = _bounded_filter(name, original, check)
        tree = _GuardLoopsAndConcats(self).visit(self.parse(source))
        return self.from_string(tree)  # from_string compiles a parsed tree as well as a source

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        budget = budget_of(context)
        budget.tick()
        sized = (str, list, tuple)
        if operator == "*":
            if isinstance(left, int) and isinstance(right, sized):
                left, right = right, left
            if isinstance(left, sized) and isinstance(right, int):
                budget.check_size(budget.weigh(left) * max(right, 0))
            elif (
                isinstance(left, int)
                and isinstance(right, int)
                and (left.bit_length() + right.bit_length() > MAX_INT_BITS)
            ):
                raise TemplateBoundsError(f"an integer of more than {MAX_INT_BITS} bits")
        elif operator == "+" and isinstance(left, sized) and isinstance(right, sized):
            budget.check_size(budget.weigh(left) + budget.weigh(right))
        elif operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1:
            if right > MAX_INT_BITS or left.bit_length() * right > MAX_INT_BITS:
                raise TemplateBoundsError(f"an integer of more than {MAX_INT_BITS} bits")
        elif operator == "%" and isinstance(left, str):
            budget.check_printf(left, right)
        return budget.check_result(super().call_binop(context, operator, left, right))

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        budget = budget_of(__context)
        budget.tick()
        method = getattr(__obj, "__wrapped__", __obj)  # the sandbox wraps str.format
        if isinstance(getattr(method, "__self__", None), str):
            items = _check_str_method(budget, method, args, kwargs)
            if items is not None:
                args = (items,)
        return budget.check_result(super().call(__context, __obj, *args, **kwargs))
