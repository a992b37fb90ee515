import sys

from pocketlm.cli import main

sys.exit(main())
