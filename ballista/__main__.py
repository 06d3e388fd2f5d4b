"""`python -m ballista`: the same as the `ballista` command."""

from ._cli import main

raise SystemExit(main())
