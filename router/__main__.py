"""`python -m router` is the `hybrid-router` command."""

from router.ops.cli import main

raise SystemExit(main())
