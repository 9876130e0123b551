import sys

from realtime_sync.cli import main

sys.exit(main())
