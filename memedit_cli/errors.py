"""Every error memedit raises on purpose, and the exit code each maps to.

Commands raise these; the CLI edge (`cli.main`) prints one line on stderr and
exits with `exit_code`. Anything else escaping is a bug and shows a traceback.
"""

# Exit codes, in one place. Scripts depend on these numbers.
EXIT_OK = 0
EXIT_USER = 1  # bad input, unknown id, nothing to do: the message says the fix
EXIT_USAGE = 2  # click's own code for a malformed command line
EXIT_DAMAGED = 3  # the repository's files are damaged: run `memedit fsck`
EXIT_LOCKED = 4  # another memedit process holds the repository lock


class MemeditError(Exception):
    """Base class: a message for users, and the exit code that goes with it.

    `detail` says what is wrong and `fix` what to do about it; the message is
    both, "DETAIL; FIX". Code that reports the damage itself (fsck) reads
    `detail` rather than cutting the message apart.
    """

    exit_code = EXIT_USER
    fix: str | None = None  # a subclass's usual advice, used when none is given

    def __init__(self, detail: str, fix: str | None = None):
        self.detail = detail
        if fix is not None:
            self.fix = fix
        super().__init__(f"{detail}; {self.fix}" if self.fix else detail)


class UserError(MemeditError):
    """The user's input or request cannot be honoured as given."""


class FactsError(UserError):
    """A facts file is malformed; the message names the file and line."""


class HparamsError(UserError):
    """Unknown, mistyped or out-of-range hyperparameters."""


class NotARepository(UserError):
    """No `.memedit/` where one was expected."""


class RevisionError(UserError):
    """A revision or id that does not resolve to exactly one thing."""


class ModelError(UserError):
    """The base model cannot be found, loaded, or is an unsupported architecture."""


class DamagedRepository(MemeditError):
    """The log, an object or HEAD fails its integrity check."""

    exit_code = EXIT_DAMAGED
    fix = "run `memedit fsck`"


class LockedError(MemeditError):
    """Another process is writing to the repository."""

    exit_code = EXIT_LOCKED
