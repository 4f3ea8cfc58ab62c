"""patchray: train, tune and serve histopathology patch classifiers on Ray.

Importing this package only defines things: it does not start Ray, import TensorFlow,
create folders or configure logging. Entry points (``patchray.cli``) do that.
"""

__version__ = "0.1.0"
