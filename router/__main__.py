"""`python -m router` is the `hybrid-router` command."""

from router.cli import main

raise SystemExit(main())
