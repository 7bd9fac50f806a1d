"""`python -m stackvisor` and the `stackvisor` command: the CLI, loaded in here so that a
Ctrl-C while it loads (nothing started yet) ends with 130, not a traceback."""


def main() -> int:
    try:
        from stackvisor.cli import main as run
    except KeyboardInterrupt:
        return 130
    return run()


if __name__ == "__main__":
    raise SystemExit(main())
