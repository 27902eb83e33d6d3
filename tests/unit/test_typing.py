"""The public API's static types, checked by running mypy (strict) on small programs that use it.

The decorators, ``ctx.step``/``ctx.map``/``ctx.child`` and ``client.start`` are only useful typed if mypy
both infers the right types for correct code and rejects wrong code. So this runs mypy once, in process,
over a shared app module and several snippets: one that must pass, with every ``reveal_type`` checked
against the type written in its comment, and others whose every error line is pinned, message included.
A snippet that mypy accepted silently (or rejected for another reason) fails its test.
"""

from __future__ import annotations

import re
import textwrap
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from mypy import api as mypy_api

import orchestrator

REPO = Path(orchestrator.__file__).resolve().parents[1]

# The app every snippet imports: steps sync and async, with and without decorator arguments, with a
# defaulted parameter; workflows with and without input.
TYPED_APP = """
from dataclasses import dataclass
from typing import Any

from orchestrator import App, WorkflowContext

app = App("typing")


@dataclass
class Order:
    id: str
    cents: int


@app.step
def validate(order: Order) -> Order:
    return order


@app.step(local=True)
async def charge(order: Order, cents: int = 0) -> str:
    return order.id


@app.step()
async def refund(order: Order, cents: int = 0) -> None:
    return None


@app.step
def release(order: Order) -> None:
    return None


@app.workflow
async def ship(ctx: WorkflowContext, order: Order) -> float:
    return 1.0


@app.workflow(name="ping")
async def ping(ctx: WorkflowContext) -> bytes:
    return b""


# Explicit Any in a signature makes mypy answer Any when two overloads match: these must not.
@app.step
async def fetch(query: dict[str, Any]) -> dict[str, Any]:
    return query


@app.workflow()
async def report(ctx: WorkflowContext, params: dict[str, Any]) -> list[Any]:
    return []
"""

PRELUDE = """
import asyncio

from orchestrator import App, RunHandle, WorkflowContext
from typed_app import Order, app, charge, fetch, ping, refund, release, report, ship, validate
"""


@dataclass
class Snippet:
    """A program for mypy. A line ending in ``# E`` (or ``# E2``, ...) must carry the next message (or the
    next two, ...) of ``errors``, in order, and no other line may have an error."""

    name: str
    source: str
    errors: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return PRELUDE + textwrap.dedent(self.source)


PASSES = Snippet(
    "passes",
    """
    async def flow(ctx: WorkflowContext, order: Order) -> None:
        reveal_type(validate)  # def (order: typed_app.Order) -> typed_app.Order
        reveal_type(charge)  # def (order: typed_app.Order, cents: int =) -> typing.Coroutine[Any, Any, str]
        reveal_type(ship)  # def (ctx: orchestrator.context.WorkflowContext, order: typed_app.Order) -> typing.Coroutine[Any, Any, float]
        reveal_type(await ctx.step(validate, order))  # typed_app.Order
        reveal_type(await ctx.step(charge, order))  # str
        reveal_type(await ctx.step(charge, order, 5, compensate=refund))  # str
        reveal_type(await ctx.step(validate, order, compensate=release))  # typed_app.Order
        reveal_type(await ctx.map(validate, [order]))  # list[typed_app.Order]
        reveal_type(await ctx.map(charge, [order], max_in_flight=2))  # list[str]
        reveal_type(await ctx.child(ship, order))  # float
        reveal_type(await ctx.child(ping))  # bytes
        reveal_type(await ctx.child(ship, order, detach=True))  # str
        reveal_type(await ctx.child("ship", 1))  # Any
        reveal_type(await ctx.step(fetch, {"q": 1}))  # dict[str, Any]
        reveal_type(await ctx.map(fetch, [{"q": 1}]))  # list[dict[str, Any]]
        reveal_type(await ctx.child(report, {}))  # list[Any]
        reveal_type(await ctx.child(report, {}, detach=True))  # str
        reveal_type(await asyncio.gather(ctx.step(validate, order), ctx.step(charge, order)))  # tuple[typed_app.Order, str]


    async def start(app: App, order: Order) -> None:
        client = app.client()
        run = await client.start(ship, order, run_id="r")
        reveal_type(run)  # orchestrator.client.RunHandle[float]
        reveal_type(await run.result(timeout=1))  # float
        reveal_type(await client.start(ping))  # orchestrator.client.RunHandle[bytes]
        reveal_type(await client.start("ship", {"id": "x"}))  # orchestrator.client.RunHandle[Any]
        reveal_type(client.get_handle("r"))  # orchestrator.client.RunHandle[Any]
        reveal_type(client.get_handle("r", ship))  # orchestrator.client.RunHandle[float]
        reveal_type(await client.start(report, {}))  # orchestrator.client.RunHandle[list[Any]]
    """,  # noqa: E501 - a revealed signature is longer than a line
)

FAILING = [
    Snippet(
        "wrong_step_argument",
        """
        async def flow(ctx: WorkflowContext, order: Order) -> None:
            await ctx.step(charge, "o-1")  # E
            await ctx.step(validate)  # E2
            await ctx.map(validate, ["o-1"])  # E
        """,
        [
            'Argument 1 to "step" of "WorkflowContext" has incompatible type '
            '"Callable[[Order, int], Coroutine[Any, Any, str]]"; '
            'expected "Callable[[str], Coroutine[Any, Any, str]]"  [arg-type]',
            'Too few arguments for "step" of "WorkflowContext"  [call-arg]',
            'Argument 1 to "step" of "WorkflowContext" has incompatible type "Callable[[Order], Order]"; '
            'expected "Callable[[], Coroutine[Any, Any, Never]]"  [arg-type]',
            'Argument 1 to "map" of "WorkflowContext" has incompatible type "Callable[[Order], Order]"; '
            'expected "Callable[[str], Coroutine[Any, Any, Never]]"  [arg-type]',
        ],
    ),
    Snippet(
        "wrong_result_type",
        """
        async def flow(ctx: WorkflowContext, order: Order) -> None:
            x: int = await ctx.step(charge, order)  # E
            y: list[int] = await ctx.map(validate, [order])  # E
            z: str = await ctx.child(ship, order)  # E
        """,
        [
            'Argument 1 to "step" of "WorkflowContext" has incompatible type '
            '"Callable[[Order, int], Coroutine[Any, Any, str]]"; '
            'expected "Callable[[Order], Coroutine[Any, Any, int]]"  [arg-type]',
            'Argument 1 to "map" of "WorkflowContext" has incompatible type "Callable[[Order], Order]"; '
            'expected "Callable[[Order], Coroutine[Any, Any, int]]"  [arg-type]',
            'Argument 1 to "child" of "WorkflowContext" has incompatible type '
            '"Callable[[WorkflowContext, Order], Coroutine[Any, Any, float]]"; '
            'expected "Callable[[WorkflowContext, Order], Awaitable[str]]"  [arg-type]',
        ],
    ),
    Snippet(
        "wrong_compensation",
        """
        async def flow(ctx: WorkflowContext, order: Order) -> None:
            await ctx.step(charge, order, 5, compensate=release)  # E2
        """,
        [
            'Too many arguments for "step" of "WorkflowContext"  [call-arg]',
            'Argument "compensate" to "step" of "WorkflowContext" has incompatible type '
            '"Callable[[Order], None]"; expected "Callable[[Order, int], object] | None"  [arg-type]',
        ],
    ),
    Snippet(
        "wrong_start_input",
        """
        async def start(app: App, order: Order) -> None:
            client = app.client()
            await client.start(ship, "o-1")  # E
            await client.start(ship)  # E
            await client.start(ping, order)  # E
            run: RunHandle[int] = await client.start(ship, order)  # E
            cents: int = await (await client.start(ship, order)).result()  # E
        """,
        [
            'Argument 1 to "start" of "Client" has incompatible type '
            '"Callable[[WorkflowContext, Order], Coroutine[Any, Any, float]]"; '
            'expected "Callable[[WorkflowContext, str], Awaitable[float]]"  [arg-type]',
            'Argument 1 to "start" of "Client" has incompatible type '
            '"Callable[[WorkflowContext, Order], Coroutine[Any, Any, float]]"; '
            'expected "Callable[[WorkflowContext], Awaitable[float]]"  [arg-type]',
            'Argument 1 to "start" of "Client" has incompatible type '
            '"Callable[[WorkflowContext], Coroutine[Any, Any, bytes]]"; '
            'expected "Callable[[WorkflowContext, Order], Awaitable[bytes]]"  [arg-type]',
            'Argument 1 to "start" of "Client" has incompatible type '
            '"Callable[[WorkflowContext, Order], Coroutine[Any, Any, float]]"; '
            'expected "Callable[[WorkflowContext, Order], Awaitable[int]]"  [arg-type]',
            'Incompatible types in assignment (expression has type "float", variable has type "int")  '
            "[assignment]",
        ],
    ),
    Snippet(
        "sync_workflow",
        """
        @app.workflow  # E
        def not_async(ctx: WorkflowContext) -> None:
            return None
        """,
        ['Value of type variable "CoroutineT" of "workflow" of "App" cannot be "None"  [type-var]'],
    ),
]

THIRD_PARTY = (
    "confluent_kafka",
    "croniter",
    "fastavro",
    "psutil",
    "pydantic",
    "pydantic_core",
    "pydantic_settings",
    "rich",
    "rocksdict",
    "typer",
)

_LINE = re.compile(r"^(?P<path>[^:]+):(?P<line>\d+): (?P<severity>error|note): (?P<message>.*)$")


@pytest.fixture(scope="module")
def mypy_output(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[tuple[int, str, str]]]:
    """One mypy run over every snippet: (line, severity, message) per snippet name."""
    root = tmp_path_factory.mktemp("typing")
    (root / "typed_app.py").write_text(TYPED_APP)
    paths = [str(root / "typed_app.py")]
    for snippet in [PASSES, *FAILING]:
        path = root / f"{snippet.name}.py"
        path.write_text(snippet.text)
        paths.append(str(path))
    # Our own config, so that the project's (which names the files to check) does not apply; mypy_path
    # puts this checkout ahead of the resources directory the wheel install leaves in site-packages.
    # Third-party packages are not analysed (their names become Any): none of them appear in the types
    # under test, and they are two thirds of the modules mypy would otherwise parse.
    skipped = ",".join(f"{module}.*" for module in THIRD_PARTY)
    config = root / "mypy.ini"
    config.write_text(
        f"[mypy]\nstrict = True\nignore_missing_imports = True\nmypy_path = {REPO}\n"
        f"[mypy-{skipped}]\nfollow_imports = skip\n"
    )
    stdout, stderr, _ = mypy_api.run(
        ["--config-file", str(config), "--cache-dir", str(root / ".mypy_cache"), "--no-pretty", *paths]
    )
    assert not stderr, stderr
    found: dict[str, list[tuple[int, str, str]]] = {}
    for line in stdout.splitlines():
        match = _LINE.match(line)
        if match is None:
            continue
        name = Path(match["path"]).stem
        found.setdefault(name, []).append((int(match["line"]), match["severity"], match["message"]))
    assert "typed_app" not in found, found["typed_app"]
    return found


def _reveals(snippet: Snippet) -> list[tuple[int, str, str]]:
    """The note mypy must print for each ``reveal_type`` line: the type written in the line's comment."""
    expected = []
    for number, line in enumerate(snippet.text.splitlines(), start=1):
        if "reveal_type(" in line:
            revealed = line.split("  # ", 1)[1]
            expected.append((number, "note", f'Revealed type is "{revealed}"'))
    return expected


def test_correct_code_passes_with_the_expected_types(
    mypy_output: dict[str, list[tuple[int, str, str]]],
) -> None:
    expected = _reveals(PASSES)
    assert len(expected) == 25
    assert mypy_output.get(PASSES.name, []) == expected


@pytest.mark.parametrize("snippet", FAILING, ids=[s.name for s in FAILING])
def test_wrong_code_fails_on_the_marked_lines(
    snippet: Snippet, mypy_output: dict[str, list[tuple[int, str, str]]]
) -> None:
    marked = []
    for number, line in enumerate(snippet.text.splitlines(), start=1):
        marker = re.search(r"  # E(\d?)$", line)
        if marker is not None:
            marked += [number] * int(marker[1] or 1)
    assert len(marked) == len(snippet.errors), "as many messages as the markers announce"
    expected = [(n, "error", message) for n, message in zip(marked, snippet.errors, strict=True)]
    assert mypy_output.get(snippet.name, []) == expected


def test_ci_type_checks_the_typed_example() -> None:
    """CI runs plain ``.venv/bin/mypy``: the example only proves something if the config names it."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mypy"]
    assert config["strict"] is True
    assert {"orchestrator", "examples/typed_orders.py"} <= set(config["files"])
    overrides = {m: o for o in config["overrides"] for m in o["module"]}
    assert overrides["examples.typed_orders"]["disallow_any_expr"] is True
    assert (REPO / "examples" / "typed_orders.py").is_file()
