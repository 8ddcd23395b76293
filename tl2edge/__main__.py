from tl2edge.cli import main

raise SystemExit(main())
