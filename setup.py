"""Distribution ``pgvisor``: a gevent service that keeps Postgres-driven event processors alive."""
from setuptools import Extension, find_packages, setup

setup(
    name="pgvisor",
    version="0.1.0",
    description="Keeps Postgres LISTEN/NOTIFY event processors alive: supervision, "
                "restart budgets, outage pauses, failover, durable spool.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["supervisor", "supervisor.*", "instances", "instances.*"]),
    # The status page's script and style sheet (supervisor/http/page.py): offline, no CDN.
    package_data={"supervisor.http": ["static/*.js", "static/*.css"]},
    # The listener's hot path in C (instances/notification.py): optional, so an install
    # without a C compiler or Python's headers still works, on the same code in Python.
    ext_modules=[Extension("instances._hotpath", ["instances/_hotpath.c"], optional=True)],
    install_requires=[
        "gevent>=23.9",
        "psycogreen>=1.0.2",
        "psycopg2-binary>=2.9",
        "watchdog>=3.0",
        "limits>=3.6",
        "prometheus_client>=0.17",
        "tomli>=2.0; python_version<'3.11'",
    ],
    extras_require={
        "test": ["pytest>=7.4", "pytest-timeout>=2.2", "selenium>=4.10"],
        "lint": ["ruff>=0.4", "import-linter>=2.0"],
        "docs": ["sphinx>=7.0", "furo>=2023.9.10"],
        "bench": ["asyncpg>=0.29", "pyinstrument>=4.6", "py-spy>=0.3"],
    },
    entry_points={"console_scripts": ["pgvisor = supervisor.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Framework :: Gevent",
        "Topic :: Database",
        "Topic :: System :: Monitoring",
    ],
)
