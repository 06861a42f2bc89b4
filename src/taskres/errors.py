"""Errors about one option, as the library names it (a field), so that the CLI can name its flag instead.

The library speaks Python: a bad value is reported against the field a caller set, ``FitConfig.shots must be a
whole number >= 1, not 0`` or ``taskres.methods.taskres: lr must be positive, not -1``. The command line
(``taskres.cli``) catches :class:`OptionError` and says the same with the flag the user typed
(``--shots must be ...``, ``--set lr must be ...``), using ``owner`` and ``field`` rather than parsing text.
"""

from __future__ import annotations


class OptionError(ValueError):
    """A bad value of one option.

    ``owner``: where the option is declared: a config class name (``"FitConfig"``, ``"SweepConfig"``) or a
    method's parameters (``method="taskres"``). ``field``: its field name. ``problem``: the rest of the sentence,
    starting with a verb or a colon (``"must be positive, not -1"``).
    """

    def __init__(self, field: str, problem: str, *, owner: str | None = None, method: str | None = None):
        self.field, self.problem, self.owner, self.method = field, problem, owner, method
        super().__init__(self.library_message())

    def library_message(self) -> str:
        if self.method is not None:
            return f"taskres.methods.{self.method}: {self.field} {self.problem}"
        return f"{self.owner}.{self.field} {self.problem}" if self.owner else f"{self.field} {self.problem}"

    def flag_message(self, flag: str) -> str:
        """The same sentence, naming ``flag`` (e.g. ``--shots`` or ``--set lr``) instead of the field."""
        return f"{flag} {self.problem}"
