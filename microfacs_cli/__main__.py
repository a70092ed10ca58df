import sys

from microfacs_cli.main import main

sys.exit(main())
