"""`python -m ballista`: the same as the `ballista` command."""

from ballista.cli.main import main

raise SystemExit(main())
