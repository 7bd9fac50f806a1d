"""How a service's `command` is run, read from the text alone: through a shell or exec'd.

A string runs through `/bin/sh -c`; a single simple command is `exec`'d by that shell,
so the service is the shell's replacement, not its child. A list is exec'd as is.
Pure: which program that is, and whether it can be known without running a shell.
"""

from __future__ import annotations

import re
import shlex

# A shell is needed only for these outside quotes; otherwise `exec` makes the service
# the direct child (and a signal meant for it, a SIGHUP to reload, reaches it).
_SHELL_SYNTAX = re.compile(r"[;&|<>()`\n]|^\s*(if|for|while|until|case|\{|!)\b")


def unquoted(command: str) -> str:
    """The command without what its quotes hold (`nginx -g "daemon off;"` has no `;` of
    the shell's). Backslash escapes count outside single quotes, as in sh."""
    out = []
    quote = ""
    escaped = False
    for char in command:
        if escaped:
            escaped = False
        elif char == "\\" and quote != "'":
            escaped = True
        elif quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        else:
            out.append(char)
    return "".join(out)


def compound(command: str) -> bool:
    """Does the string need the shell for more than one simple command?"""
    return bool(_SHELL_SYNTAX.search(unquoted(command)))


def shell_argv(command: str) -> list[str]:
    if compound(command):
        return ["/bin/sh", "-c", command]
    return ["/bin/sh", "-c", f"exec {command}"]


def program(command: str | list[str]) -> tuple[str | None, bool]:
    """The program a command runs, and whether that is certain.

    Certain for a list and for a simple string command; for a compound shell command
    only its first word is a guess (it may be a shell builtin, a variable assignment or
    a function). None when there is no word to take.
    """
    if isinstance(command, list):
        return (command[0] if command else None), True
    several = compound(command)
    try:
        words = shlex.split(command, comments=False, posix=True)
    except ValueError:
        return None, False
    while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
        words.pop(0)  # `FOO=1 prog`: the assignment is not the program
        several = True
    return (words[0] if words else None), not several
