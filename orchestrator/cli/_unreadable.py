"""How the read commands report records they skipped, and the exit codes that say so.

Every command that reads a topic record by record (history, export, replay, runs list/show, dlq) carries
on past a record it cannot use, prints where it is and why on stderr as it goes (stdout stays the
command's output, e.g. JSON Lines), ends with a count, and exits with `EXIT_UNREADABLE` so scripts and CI
notice that the answer is incomplete.
"""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

from orchestrator._engine.unreadable import OnUnreadable, Skipped, Unreadable

EXIT_OK = 0
EXIT_DIFFERENCES = 1
"""replay found a run whose replayed state differs from the live one (or, with --check, a divergence)."""
EXIT_USAGE = 2
"""Bad arguments, or nothing to show (the CLI's errors)."""
EXIT_UNREADABLE = 3
"""Unreadable records were skipped (each reported); everything that could be read was fine."""

stderr = Console(stderr=True)


class SkipReport:
    """The skipped records of one command: printed as they are met (unless ``quiet``), counted at the end.

    A command may read several topics; each gets its own `collector` (so a record's key is read in its
    topic's terms), and the report counts them all.
    """

    def __init__(self, *, quiet: bool = False) -> None:
        self._quiet = quiet
        self._collectors: list[Skipped] = []

    def collector(self, also: OnUnreadable | None = None) -> Skipped:
        """A new `Skipped` for one read; ``also`` sees each record too (e.g. to show it in place)."""

        def echo(bad: Unreadable) -> None:
            if not self._quiet:
                stderr.print(f"[yellow]skipped[/yellow] {escape(str(bad))}")
            if also is not None:
                also(bad)

        skipped = Skipped(echo=echo)
        self._collectors.append(skipped)
        return skipped

    @property
    def records(self) -> list[Unreadable]:
        return [bad for skipped in self._collectors for bad in skipped.records]

    def summary(self) -> str:
        """One line for the end of the output: how many records were skipped, by reason."""
        records = self.records
        if not records:
            return "0 unreadable records"
        by_reason: dict[str, int] = {}
        for bad in records:
            by_reason[bad.reason] = by_reason.get(bad.reason, 0) + 1
        reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(by_reason.items()))
        return f"{len(records)} unreadable record(s) skipped ({reasons})"

    def print_summary(self) -> None:
        """The count on stderr, only when something was skipped."""
        if self.records:
            stderr.print(f"[yellow]{escape(self.summary())}[/yellow]")

    def exit_code(self) -> int:
        return EXIT_UNREADABLE if self.records else EXIT_OK
