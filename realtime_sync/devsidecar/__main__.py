"""``python -m realtime_sync.devsidecar``."""

from realtime_sync.devsidecar.cli import main

raise SystemExit(main())
