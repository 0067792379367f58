from credits_service.cli import main

raise SystemExit(main())
