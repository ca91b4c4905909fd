"""Task runner: every check and tool of the project is a nox session.

``nox -s tests`` is what CI runs (.ci/run); ``nox -s demo`` is the
quickstart's demo. Sessions reuse their virtualenv between runs when nox is
asked to (``-R``); CI always builds them fresh.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
# Sessions run on the interpreter nox runs on: any Python 3.11 or newer.
nox.options.default_venv_backend = "venv"

SOURCES = ["trustelem_relay", "tests", "benchmarks", "noxfile.py"]


@nox.session
def tests(session: nox.Session) -> None:
    """Run the whole test suite with branch coverage."""
    session.install("-e", ".[test]")
    session.run(
        "coverage",
        "run",
        "-m",
        "pytest",
        *(session.posargs or ["-p", "no:cacheprovider", "-q"]),
    )
    session.run("coverage", "report", "--skip-covered", "--precision=1")


@nox.session
def lint(session: nox.Session) -> None:
    """Formatting and lint rules (ruff)."""
    session.install("-e", ".[lint]")
    session.run("ruff", "format", "--check", *SOURCES)
    session.run("ruff", "check", *SOURCES)


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package and the tests."""
    session.install("-e", ".[typecheck]")
    session.run("mypy", "trustelem_relay", "tests", "benchmarks")


@nox.session
def demo(session: nox.Session) -> None:
    """Provision a user through a hub and an agent into a real SCIM server."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "trustelem_relay", "demo", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Relay path against the direct path; prints ratios, writes JSON."""
    session.install("-e", ".[test]")
    session.run("python", "benchmarks/relay_bench.py", *session.posargs)


@nox.session
def fuzz(session: nox.Session) -> None:
    """Long Hypothesis runs of the protocol properties."""
    session.install("-e", ".[test]")
    session.run(
        "pytest",
        "-q",
        "--hypothesis-profile=fuzz",
        "tests/test_frames.py",
        "tests/test_session.py",
        "tests/test_handshake.py",
        "tests/test_mux.py",
        "tests/test_mux_statemachine.py",
        *session.posargs,
    )


@nox.session
def docs(session: nox.Session) -> None:
    """Check that every relative link in README and docs/ resolves."""
    session.run("python", "docs/check_links.py", external=False)
