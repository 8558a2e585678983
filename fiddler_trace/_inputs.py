"""Arguments and results -> columns, planned once per decorated function.

At decoration :class:`CallPlan` reads the signature once; the builders it hands out do only what
the call needs: ``dict(zip(names, args))``, the keyword arguments, the missing defaults. The
rules (the decorator's documentation, "Events"):

- inputs are the call's arguments by parameter name, defaults applied, without ``self``/``cls``;
  ``*args`` beyond the named parameters become one column named after it (a tuple), keywords
  caught by ``**kwargs`` become columns of their own;
- a function whose one data parameter receives a mapping gets that mapping's keys as columns;
- ``inputs=`` a list of names keeps those columns (after the expansion, so they may name keys of
  the one mapping argument), or a callable ``(*args, **kwargs) -> mapping`` replaces the rule;
- outputs: a returned mapping gives its keys, anything else goes into ``output_column``;
  ``outputs=`` a list of names zips a tuple/list result (or picks keys of a mapping), or a
  callable ``result -> mapping``.

Builders always return a new dict that the caller owns: capture adds columns to it, and the
caller's own containers are never modified. Top-level values are those of call time; nested
containers are taken by reference (copying them would cost a deep copy per call).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Optional, Union

from fiddler_trace._errors import ConfigurationError

__all__ = ["CallPlan", "InputBuilder", "Names", "OutputAdder", "check_names", "output_adder"]

InputBuilder = Callable[[Any, tuple, dict], dict]  # (instance, args, kwargs) -> columns
OutputAdder = Callable[[dict, Any], None]  # (columns, result) -> None, adds to columns
Names = Union[Sequence[str], Callable[..., Any], None]

_BOUND_FIRST = frozenset({"self", "cls"})
_PLAIN = frozenset({int, float, str, bool, type(None), list, tuple, bytes})  # never mappings


def check_names(where: str, value: Any) -> Names:
    """None, a callable, or a list/tuple of column names; else ConfigurationError."""
    if value is None or callable(value):
        return value  # type: ignore[no-any-return]
    if (
        isinstance(value, (list, tuple))
        and value
        and all(isinstance(name, str) and name for name in value)
    ):
        return tuple(value)
    raise ConfigurationError(
        f"{where} is {value!r}; accepted: a non-empty list of names, a callable, or None"
    )


class CallPlan:
    """How one function's arguments map to columns, read from its signature once.

    Args:
        func: the decorated function, classmethod or staticmethod.
    """

    def __init__(self, func: Any) -> None:
        target = func.__func__ if isinstance(func, (classmethod, staticmethod)) else func
        self.name: str = getattr(target, "__qualname__", None) or repr(target)
        try:
            signature: Optional[inspect.Signature] = inspect.signature(target)
        except (TypeError, ValueError):  # some builtins and C callables have none
            signature = None
        self.introspected = signature is not None
        params = list(signature.parameters.values()) if signature is not None else []
        kinds = inspect.Parameter
        self.positional = tuple(
            p.name for p in params if p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD)
        )
        self.keyword_only = tuple(p.name for p in params if p.kind is kinds.KEYWORD_ONLY)
        self.var_positional = next((p.name for p in params if p.kind is kinds.VAR_POSITIONAL), None)
        self.var_keyword = next((p.name for p in params if p.kind is kinds.VAR_KEYWORD), None)
        self.defaults = tuple((p.name, p.default) for p in params if p.default is not p.empty)
        # A leading self/cls is never a column. wrapt passes it as `instance` when it binds the
        # call; the name rule covers bindings it cannot see (e.g. classmethod over the wrapper).
        self.first_bound = (
            not isinstance(func, staticmethod)
            and bool(self.positional)
            and self.positional[0] in _BOUND_FIRST
        )
        named = self.positional[1:] if self.first_bound else self.positional
        self.data_names: tuple[str, ...] = named + self.keyword_only
        # The one-mapping rule needs exactly one data parameter and no catch-alls.
        self.single: Optional[str] = (
            self.data_names[0]
            if len(self.data_names) == 1 and not self.var_positional and not self.var_keyword
            else None
        )

    def check_inputs(self, where: str, names: Sequence[str]) -> None:
        """Refuse names that cannot be columns of a call (the list is checked at decoration).

        Names of keys are accepted when the function takes one mapping or ``**kwargs``.
        """
        if self.single is not None or self.var_keyword is not None or not self.introspected:
            return
        known = set(self.data_names)
        if self.var_positional:
            known.add(self.var_positional)
        unknown = [name for name in names if name not in known]
        if unknown:
            accepted = ", ".join(self.data_names) or "(none)"
            raise ConfigurationError(
                f"{where} names {', '.join(map(repr, unknown))}, not a parameter of "
                f"{self.name}; accepted: its parameter names: {accepted}"
            )

    def first_data(self, instance: Any, args: tuple, kwargs: dict) -> Any:
        """The first data argument of a call (the batch path's rows), or None."""
        skip = 1 if instance is None and self.first_bound else 0
        if len(args) > skip:
            return args[skip]
        for name in self.data_names:
            if name in kwargs:
                return kwargs[name]
        return None

    def display_names(
        self, inputs: Names
    ) -> tuple[Optional[tuple[str, ...]], Optional[tuple[str, ...]]]:
        """The parameter names of a call that gives every parameter by position, for columns
        written as a dict display: ``(free, bound)``, for a call of the function itself and for
        one through an instance or class (``self``/``cls`` taken off). None where the input
        builder must run: ``inputs=`` given, one mapping parameter to expand, keyword-only
        parameters, or no signature.
        """
        if inputs is not None or self.single is not None:
            return None, None
        if not self.introspected or self.keyword_only:
            return None, None
        names = self.positional
        return (None if self.first_bound else names), names[1:]

    def input_builder(self, inputs: Names) -> InputBuilder:
        """The ``(instance, args, kwargs) -> columns`` function for this plan and ``inputs=``."""
        if callable(inputs):
            return _from_callable(inputs)
        build = self._bound_builder()
        if self.single is not None:
            build = _expanding(build, self.single)
        if inputs is not None:
            build = _keeping(build, tuple(inputs))
        return build

    def _bound_builder(self) -> InputBuilder:
        if not self.introspected:

            def by_position(instance: Any, args: tuple, kwargs: dict) -> dict:
                columns = {f"arg{i}": value for i, value in enumerate(args)}
                columns.update(kwargs)
                return columns

            return by_position

        names = self.positional
        bound_names = names[1:]
        first = names[0] if self.first_bound else None
        defaults = self.defaults
        var_positional = self.var_positional
        # Without catch-alls, as many columns as data parameters means no default is missing.
        exact = var_positional is None and self.var_keyword is None
        complete = len(self.data_names)

        def build(instance: Any, args: tuple, kwargs: dict) -> dict:
            if instance is None:
                columns = dict(zip(names, args))
                taken = len(names)
                if first is not None:
                    columns.pop(first, None)
            else:  # wrapt took self/cls off the arguments
                columns = dict(zip(bound_names, args))
                taken = len(bound_names)
            if var_positional is not None and len(args) > taken:
                columns[var_positional] = args[taken:]
            if kwargs:
                columns.update(kwargs)
            if defaults and (not exact or len(columns) < complete):
                for name, value in defaults:
                    if name not in columns:
                        columns[name] = value
            return columns

        if self.keyword_only:  # their defaults are the general path's
            return build
        return _with_display(build, names if first is None else None, bound_names)


_DISPLAY_TEMPLATE = """\
def build(instance, args, kwargs):
    if not kwargs:
        if instance is None:
            if {free_check}:
                return {{{free_items}}}
        elif len(args) == {bound_count}:
            return {{{bound_items}}}
    return general(instance, args, kwargs)
"""


def _with_display(
    general: InputBuilder, free: Optional[tuple[str, ...]], bound: tuple[str, ...]
) -> InputBuilder:
    """``general`` with a fast path for the usual call, every parameter given by position.

    ``dict(zip(names, args))`` builds a tuple per column; a dict display compiled once for the
    function (``{'age': args[0], ...}``, as namedtuple and dataclasses compile their methods)
    costs half as much. ``free`` are the names of an unbound call (None: its first argument is
    a self/cls that ``general`` drops), ``bound`` those after the self/cls wrapt took off.
    Every parameter given means no default is missing and no ``*args`` or ``**kwargs`` remain.
    """

    def items(names: tuple[str, ...]) -> str:
        return ", ".join(f"{name!r}: args[{i}]" for i, name in enumerate(names))  # repr: safe

    source = _DISPLAY_TEMPLATE.format(
        free_check="False" if free is None else f"len(args) == {len(free)}",
        free_items=items(free or ()),
        bound_count=len(bound),
        bound_items=items(bound),
    )
    namespace: dict[str, Any] = {"general": general}
    exec(compile(source, "<fiddler_trace input builder>", "exec"), namespace)
    return namespace["build"]  # type: ignore[no-any-return]


def _from_callable(inputs: Callable[..., Any]) -> InputBuilder:
    def build(instance: Any, args: tuple, kwargs: dict) -> dict:
        value = inputs(*args, **kwargs)
        if isinstance(value, Mapping):
            return dict(value)
        raise TypeError(f"inputs= returned {type(value).__name__}; accepted: a mapping")

    return build


def _expanding(build: InputBuilder, name: str) -> InputBuilder:
    def expand(instance: Any, args: tuple, kwargs: dict) -> dict:
        columns = build(instance, args, kwargs)
        value = columns.get(name)
        if type(value) is dict or isinstance(value, Mapping):
            return dict(value)
        return columns

    return expand


def _keeping(build: InputBuilder, keep: tuple[str, ...]) -> InputBuilder:
    def select(instance: Any, args: tuple, kwargs: dict) -> dict:
        columns = build(instance, args, kwargs)
        return {name: columns[name] for name in keep if name in columns}

    return select


def output_adder(outputs: Names, output_column: str) -> OutputAdder:
    """The ``(columns, result) -> None`` function that adds the result's columns.

    Outputs are added after inputs, so an output wins over an input of the same name.
    """
    if outputs is None:

        def add(columns: dict, result: Any) -> None:
            kind = type(result)
            if kind is dict:
                columns.update(result)
            elif kind in _PLAIN or not isinstance(result, Mapping):  # skip the ABC check
                columns[output_column] = result
            else:
                columns.update(result)

        return add

    if callable(outputs):
        convert = outputs

        def add_converted(columns: dict, result: Any) -> None:
            value = convert(result)
            if not isinstance(value, Mapping):
                raise TypeError(f"outputs= returned {type(value).__name__}; accepted: a mapping")
            columns.update(value)

        return add_converted

    names = tuple(outputs)

    def add_named(columns: dict, result: Any) -> None:
        if isinstance(result, Mapping):
            for name in names:
                if name in result:
                    columns[name] = result[name]
        elif is_sequence(result) and len(result) == len(names):
            columns.update(zip(names, result))
        elif len(names) == 1:
            columns[names[0]] = result
        else:
            size = f"{len(result)} values" if is_sequence(result) else type(result).__name__
            raise ValueError(f"outputs= names {len(names)} values but the result is {size}")

    return add_named


def is_sequence(value: Any) -> bool:
    """A list, a tuple or a numpy array: values that ``outputs=`` names can zip."""
    return isinstance(value, (list, tuple)) or (
        type(value).__module__ == "numpy" and hasattr(value, "__len__")
    )
