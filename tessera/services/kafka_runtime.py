"""What the Kafka broker runs on: the machine's Java, and Kafka's jars fetched by Maven.

The jars come from Maven Central through ``tessera/services/pom.xml`` and are cached per
version under ``<state_dir>/kafka/<version>/libs``. A marker file, written only after Maven
succeeds, tells a complete copy from one cut short, which is fetched again.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from tessera.services.errors import ServiceError
from tessera.services.lifecycle import Say

MIN_JAVA = 17
POM = Path(__file__).with_name("pom.xml")
COMPLETE_MARKER = ".tessera-complete"
_MVN_TIMEOUT_S = 900
_JAVA_HINT = "Hint: install it (`apt-get install openjdk-17-jre-headless`) or set JAVA_HOME."


def find_java() -> str:
    """The ``java`` to run Kafka with: ``$JAVA_HOME/bin/java``, else ``java`` on PATH.

    Raises:
        ServiceError: no Java, or one older than 17 (Kafka 4 brokers need 17).
    """
    home = os.environ.get("JAVA_HOME")
    if home:
        exe = str(Path(home) / "bin" / "java")
        if not os.access(exe, os.X_OK):
            raise ServiceError(f"JAVA_HOME={home!r} has no executable bin/java. {_JAVA_HINT}")
    else:
        found = shutil.which("java")
        if found is None:
            raise ServiceError(f"Java {MIN_JAVA}+ is needed to run Kafka; `java` is not on PATH "
                               f"and JAVA_HOME is unset. {_JAVA_HINT}")
        exe = found
    major = java_major(exe)
    if major < MIN_JAVA:
        raise ServiceError(f"{exe} is Java {major}; Kafka needs Java {MIN_JAVA} or newer. {_JAVA_HINT}")
    return exe


def java_major(exe: str) -> int:
    """The major version of ``exe`` (``java -version``): 17 for "17.0.15", 8 for "1.8.0_402"."""
    try:
        done = subprocess.run([exe, "-version"], capture_output=True, text=True, timeout=30,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ServiceError(f"could not run {exe!r} -version: {e}") from None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', done.stderr + done.stdout)
    if match is None:
        raise ServiceError(f"could not read the Java version from {exe!r} -version: "
                           f"{(done.stderr or done.stdout).strip()[:200]!r}")
    first, second = int(match.group(1)), int(match.group(2) or 0)
    return second if first == 1 else first


def ensure_jars(libs: Path, version: str, say: Say) -> Path:
    """Kafka ``version``'s jars in ``libs``, fetched with Maven unless already complete there.

    Raises:
        ServiceError: Maven is missing, or could not resolve that version.
    """
    broker_jar = libs / f"kafka_2.13-{version}.jar"
    if (libs / COMPLETE_MARKER).exists() and broker_jar.exists():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ServiceError("Maven (`mvn`) is needed once per Kafka version to fetch the broker's "
                           "jars from Maven Central, and is not on PATH. Hint: `apt-get install "
                           "maven`, then run `tessera services up` again.")
    if libs.exists():
        shutil.rmtree(libs)  # an earlier copy was cut short: start clean
    say(f"kafka: fetching Apache Kafka {version} jars from Maven Central (once per version)")
    argv = [mvn, "-q", "-B", "-Dstyle.color=never", "-f", str(POM), "dependency:copy-dependencies",
            f"-DoutputDirectory={libs}", f"-Dkafka.version={version}"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=_MVN_TIMEOUT_S,
                              check=False)
    except subprocess.TimeoutExpired:
        raise ServiceError(f"Maven took over {_MVN_TIMEOUT_S} s to fetch Kafka {version}'s jars; "
                           f"run by hand to see why: {' '.join(argv)}") from None
    if done.returncode != 0 or not broker_jar.exists():
        out = "\n".join(_maven_errors(done.stdout + done.stderr)[-20:])
        raise ServiceError(
            f"Maven could not fetch Apache Kafka {version!r} (exit {done.returncode}). Hint: check "
            f"that org.apache.kafka:kafka_2.13:{version} exists on Maven Central and that Maven "
            f"can reach it (proxy settings in ~/.m2/settings.xml).\n{out}"
        )
    (libs / COMPLETE_MARKER).write_text(f"kafka {version}\n", encoding="utf-8")
    return libs


def _maven_errors(output: str) -> list[str]:
    """Maven's output without colour codes and without its generic "re-run with -e" advice."""
    generic = ("To see the full", "Re-run Maven", "For more information", "[Help 1] http")
    lines = []
    for line in re.sub(r"\x1b\[[0-9;]*m", "", output).splitlines():
        text = line.removeprefix("[ERROR]").strip()
        if text and not text.startswith(generic):
            lines.append(line)
    return lines


def jar_version(libs: Path) -> tuple[str, str] | None:
    """(version, commit id) of the Kafka in ``libs``, from ``kafka-clients``' own properties.

    This is the file Kafka's ``AppInfoParser`` reads to log "Kafka version: ...", so it names
    the code that actually runs, whatever the config asks for.
    """
    import zipfile  # local: only status and up need it

    for jar in sorted(libs.glob("kafka-clients-*.jar")):
        try:
            with zipfile.ZipFile(jar) as z:
                text = z.read("kafka/kafka-version.properties").decode("utf-8")
        except (OSError, KeyError, zipfile.BadZipFile):
            continue
        props = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
        if "version" in props:
            return props["version"].strip(), props.get("commitId", "").strip()
    return None
