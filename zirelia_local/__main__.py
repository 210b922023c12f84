from zirelia_local.cli import main

raise SystemExit(main())
