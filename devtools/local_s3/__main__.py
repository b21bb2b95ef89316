import sys

from devtools.local_s3.cli import main

sys.exit(main())
