"""The web server: sign-in, per-user access, audited reads over SSH, the log viewer.

`create_app(config)` in `app.py` builds the ASGI app; `logtorukun serve` runs it.
"""

from .auth import AuthError as AuthError  # for ops (the demo creates its users)
from .auth import AuthStore as AuthStore
