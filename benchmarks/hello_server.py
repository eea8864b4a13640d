"""Serve the bare hello app through ``bota-ota serve`` itself, so both get the same uvicorn settings.

``serve`` builds the uvicorn configuration (workers, host, log level, proxy headers, and whatever it
adds later: loop, HTTP implementation, access log). This entry point runs that very command with
``uvicorn.run`` wrapped so that only the application is swapped for the hello app.

    python -m benchmarks.hello_server serve --port 8001 --workers 2 --log-level warning --data-dir DIR
"""

from __future__ import annotations

from typing import Any

HELLO_FACTORY = "benchmarks.hello:create_app"


def main() -> None:
    import uvicorn

    from bota_ota.cli.main import app as cli

    real_run = uvicorn.run

    def run_hello(app: Any, **kwargs: Any) -> None:
        if isinstance(app, str):
            real_run(HELLO_FACTORY if kwargs.get("factory") else "benchmarks.hello:hello", **kwargs)
        else:
            from benchmarks.hello import hello

            real_run(hello, **kwargs)

    uvicorn.run = run_hello
    cli()


if __name__ == "__main__":  # spawned uvicorn workers import this module as __mp_main__: do nothing there
    main()
