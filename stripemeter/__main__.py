from stripemeter.cli import main

raise SystemExit(main())
