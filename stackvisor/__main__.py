"""`python -m stackvisor` is the same as the `stackvisor` command."""

from stackvisor.cli import main

raise SystemExit(main())
