"""`python -m critstep.configs NAME` prints the path of a shipped config, for tools that read a file
themselves: `accelerate launch --config_file "$(python -m critstep.configs accelerate-fsdp-qlora.yaml)"`."""

import sys

from critstep.configs import resolve_config, shipped_configs
from critstep.errors import ConfigError

if len(sys.argv) != 2:
    sys.exit("usage: python -m critstep.configs NAME (one of: " + ", ".join(shipped_configs()) + ")")
try:
    print(resolve_config(sys.argv[1]).resolve())
except ConfigError as e:
    sys.exit(f"error: {e}")
