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
    starting with a verb or a colon (``"must be positive, not -1"``); it may name other options as ``{NAME}``
    placeholders of ``mentions`` (see :func:`naming`).
    """

    def __init__(self, field: str, problem: str, *, owner: str | None = None, method: str | None = None,
                 mentions: dict | None = None):
        self.field, self.problem, self.owner, self.method = field, problem, owner, method
        self.mentions = dict(mentions or {})
        super().__init__(self.library_message())

    def library_message(self) -> str:
        problem = fill(self.problem, self.mentions, Mention.library_text)
        if self.method is not None:
            return f"taskres.methods.{self.method}: {self.field} {problem}"
        return f"{self.owner}.{self.field} {problem}" if self.owner else f"{self.field} {problem}"

    def flag_message(self, flag: str, text_of=None) -> str:
        """The same sentence, naming ``flag`` (e.g. ``--shots`` or ``--set lr``) instead of the field, and each
        mentioned option as ``text_of(mention)`` gives it (the CLI's flags)."""
        return f"{flag} {fill(self.problem, self.mentions, text_of or Mention.library_text)}"


# A sentence that mentions other options than the one at fault ("... use {skip_bad_images} to skip it") keeps
# its placeholders and what each stands for, so that the CLI can fill them with flags from the same data; the
# text itself is never parsed.
class _Unset:
    """No value to suggest; pickles as this module's one UNSET (errors cross process boundaries)."""

    def __reduce__(self):
        return "UNSET"

    def __repr__(self):
        return "UNSET"


UNSET = _Unset()


class Mention:
    """An option a sentence mentions: its ``owner`` (a config class name; None for an environment variable),
    ``field``, the value to suggest, and ``said``: the library's own words where the option is no field (a
    sweep file, ``--set`` items), which the CLI still names by its flag."""

    def __init__(self, owner: str | None, field: str, value=UNSET, said: str | None = None):
        self.owner, self.field, self.value, self.said = owner, field, value, said

    def library_text(self) -> str:
        if self.said is not None:
            return self.said
        if self.owner is None:  # an environment variable: NAME or NAME=VALUE, as a shell sets it
            return self.field if self.value is UNSET else f"{self.field}={self.value}"
        name = f"{self.owner}.{self.field}"
        return name if self.value is UNSET else f"{name}={self.value!r}"


def fill(template: str, mentions: dict[str, Mention], text_of) -> str:
    """``template`` with each ``{NAME}`` of ``mentions`` replaced by ``text_of(mention)``."""
    for name, mention in mentions.items():
        template = template.replace("{" + name + "}", text_of(mention))
    return template


def naming(error_class: type[Exception], template: str, **mentions: Mention) -> Exception:
    """An ``error_class`` whose sentence names options as fields; the CLI re-fills ``template`` with flags."""
    exc = error_class(fill(template, mentions, Mention.library_text))
    exc.option_template, exc.option_mentions = template, mentions
    return exc
