"""One place that builds the SparkSession Tessera runs on.

Settings that every engine path depends on are fixed here, so a cluster and ``local[2]`` in the
tests agree on semantics:

- ``spark.sql.session.timeZone=UTC``: times are UTC everywhere; naive timestamps read as UTC.
- ``spark.sql.ansi.enabled=false`` is *not* relied upon: compiled expressions guard division by
  zero and bad casts themselves, so they mean the same under either ANSI setting.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def get_spark(master: str = "local[2]", app_name: str = "tessera",
              conf: dict[str, str] | None = None) -> SparkSession:
    """Return the active SparkSession or build one for ``master``.

    Example:
        >>> spark = get_spark("local[2]")          # doctest: +SKIP
        >>> spark.conf.get("spark.sql.session.timeZone")   # doctest: +SKIP
        'UTC'
    """
    # Executors must run the same interpreter (and so the same pyspark) as the driver.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    # Servers we start listen on loopback only.
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark.sql import SparkSession

    builder = (
        SparkSession.builder.master(master)
        .appName(app_name)
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.extraJavaOptions", "-Duser.timezone=UTC")
        .config("spark.executor.extraJavaOptions", "-Duser.timezone=UTC")
        .config("spark.sql.shuffle.partitions", "8")
        .config("spark.ui.enabled", "false")
        # Tessera draws its own progress bar; Spark's stage bars would interleave with it.
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
    )
    for key, value in (conf or {}).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark
