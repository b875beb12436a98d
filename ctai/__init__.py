"""ctai: an AI chest-image classifier inside the hospital's own systems."""

import pluggy

__version__ = "0.1.0"

#: Decorator for plugin hook implementations (see ``ctai.hookspecs``).
hookimpl = pluggy.HookimplMarker("ctai")
