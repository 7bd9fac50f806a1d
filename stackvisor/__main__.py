"""`python -m stackvisor` is the same as the `stackvisor` command."""

try:
    from stackvisor.cli import main
except KeyboardInterrupt:  # Ctrl-C while it loads: nothing started yet
    raise SystemExit(130) from None

raise SystemExit(main())
