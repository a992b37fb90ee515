"""pocketlm: train, specialise, shrink and run small language models on your own hardware."""

import logging as _logging

__version__ = "0.1.0"

# When torchao is installed (int8 models), transformers imports it with its quantizers on every model load;
# torchao then logs a line per optional GPU kernel this machine cannot load, and torch a deprecation note per
# enum torchao registers. Neither means anything to a user.
for _name in ("torchao", "torch.utils._pytree"):
    _logging.getLogger(_name).setLevel(_logging.ERROR)
