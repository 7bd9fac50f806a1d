"""How a service's `command` is run, read from the text alone: through a shell or exec'd.

A string runs through `/bin/sh -c`; a single simple command is `exec`'d by that shell,
so the service is the shell's replacement, not its child. A list is exec'd as is.
Pure: which program that is, and whether it can be known without running a shell.
"""

from __future__ import annotations

import re
import shlex

# A shell is needed only for these; otherwise `exec` makes the service the direct child.
_SHELL_SYNTAX = re.compile(r"[;&|<>()`\n]|^\s*(if|for|while|until|case|\{|!)\b")


def shell_argv(command: str) -> list[str]:
    if _SHELL_SYNTAX.search(command):
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
    compound = bool(_SHELL_SYNTAX.search(command))
    try:
        words = shlex.split(command, comments=False, posix=True)
    except ValueError:
        return None, False
    while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
        words.pop(0)  # `FOO=1 prog`: the assignment is not the program
        compound = True
    return (words[0] if words else None), not compound
