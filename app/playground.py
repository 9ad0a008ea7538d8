"""The playground as an app file: `python app/playground.py` serves it, the way a Hugging Face Space
runs its app file. All of it lives in qlcode.ui; `qlcode play` is the same app with options.

Settings come from the environment: QLCODE_BASE (default builtin:micro-codellama), QLCODE_BITS
(4, 8 or none), QLCODE_LEFT, QLCODE_RIGHT, QLCODE_VOTES (a directory), QLCODE_AUTH (logins, one
USER:PASSWORD per line: a Space's secret), GRADIO_SERVER_NAME (default 127.0.0.1; a Space sets
0.0.0.0) and GRADIO_SERVER_PORT (default 7860).
"""

import os
from pathlib import Path

from qlcode.ui.access import logins
from qlcode.ui.app import launch

if __name__ == "__main__":
    bits = os.environ.get("QLCODE_BITS", "4")
    auth = logins(os.environ["QLCODE_AUTH"], "QLCODE_AUTH") if os.environ.get("QLCODE_AUTH") else None
    launch(base=os.environ.get("QLCODE_BASE", "builtin:micro-codellama"), bits=None if bits == "none" else int(bits),
           left=os.environ.get("QLCODE_LEFT", "base"), right=os.environ.get("QLCODE_RIGHT"),
           votes=Path(os.environ.get("QLCODE_VOTES", "data/votes")),
           host=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
           auth=auth)
