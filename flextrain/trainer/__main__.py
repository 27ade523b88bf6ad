import sys

from flextrain.trainer.main import main

sys.exit(main())
