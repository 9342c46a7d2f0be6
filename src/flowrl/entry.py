"""What every Hydra-style entry point shares: the command line is checked against the config tree
and the schemas before Hydra starts (one line, exit status 2, in about a second)."""

from __future__ import annotations

import os
import sys


def run_checked(main, config_name: str = "train") -> None:
    """check_command_line(sys.argv[1:]), then `main()` (a hydra.main function)."""
    from flowrl.config.compose import check_command_line
    from flowrl.config.errors import UserFacingError

    try:
        check_command_line(sys.argv[1:], config_name)
    except UserFacingError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"flowrl: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    main()
