import sys

from .segmentation_node import main

sys.exit(main())
