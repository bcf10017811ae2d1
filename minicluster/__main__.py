import sys

from minicluster.cli import main

sys.exit(main())
