"""Obtain the Apache Kafka broker jars from Maven Central, once per machine.

No OS or PyPI package ships a real Kafka broker, but Maven Central has ``kafka_2.13`` with its runtime
dependencies. We let Maven resolve them (it knows the dependency graph and the mirrors a user configured)
into one ``lib/`` folder outside the repository, so later starts need no network and ``lib/*`` is the whole
classpath. The published POMs leave out the logging binding, without which the broker logs nothing at all,
so we add slf4j 1.x and its log4j2 binding ourselves.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from orchestrator._devkafka.errors import DevKafkaError

KAFKA_VERSION = "4.3.1"
SCALA_VERSION = "2.13"
MIN_JAVA_MAJOR = 17

_EXTRA_DEPENDENCIES: tuple[tuple[str, str, str], ...] = (
    ("org.slf4j", "slf4j-api", "1.7.36"),
    ("org.apache.logging.log4j", "log4j-core", "2.25.2"),
    ("org.apache.logging.log4j", "log4j-slf4j-impl", "2.25.2"),
)
_COMPLETE_MARKER = ".complete"
_MAVEN_TIMEOUT_S = 900
_DEPENDENCY_PLUGIN = "3.6.1"


def cache_dir() -> Path:
    """Per-version cache folder: outside the repo so every clone and data dir shares one download."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "orchestrator" / "kafka" / KAFKA_VERSION


def lib_dir() -> Path:
    """Folder whose ``*`` is the broker's classpath."""
    return cache_dir() / "lib"


def jars_present() -> bool:
    """True once a download finished; the marker guards against trusting a half-copied folder."""
    lib = lib_dir()
    return (lib / _COMPLETE_MARKER).is_file() and any(lib.glob("kafka_*.jar"))


def java_executable() -> str:
    """The ``java`` to run: ``$JAVA_HOME/bin/java`` when set (as Kafka's own scripts do), else PATH."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise DevKafkaError(
            f"Java not found: the Kafka broker needs Java {MIN_JAVA_MAJOR}+ "
            "(install e.g. openjdk-17-jre-headless, or set JAVA_HOME)."
        )
    return found


def parse_java_major(version_output: str) -> int:
    """Major version from ``java -version`` output ("1.8.0_x" is 8, "17.0.15" is 17)."""
    match = re.search(r'version "([^"]+)"', version_output)
    if match is None:
        raise DevKafkaError(f"Cannot read the Java version from: {version_output.strip()[:200]!r}")
    parts = match.group(1).split(".")
    first = int(re.sub(r"\D.*", "", parts[0]) or "0")
    if first == 1 and len(parts) > 1:
        return int(re.sub(r"\D.*", "", parts[1]) or "0")
    return first


def check_java() -> str:
    """Return the java executable after checking it is recent enough for a Kafka 4 broker."""
    java = java_executable()
    result = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60, check=False)
    major = parse_java_major(result.stderr + result.stdout)
    if major < MIN_JAVA_MAJOR:
        raise DevKafkaError(
            f"{java} is Java {major}; Kafka {KAFKA_VERSION} needs Java {MIN_JAVA_MAJOR} or newer "
            "(set JAVA_HOME to a newer JDK)."
        )
    return java


def render_pom() -> str:
    """A throwaway POM whose only purpose is to make Maven resolve the broker's runtime classpath."""
    deps = [("org.apache.kafka", f"kafka_{SCALA_VERSION}", KAFKA_VERSION), *_EXTRA_DEPENDENCIES]
    dep_xml = "\n".join(
        f"    <dependency><groupId>{g}</groupId><artifactId>{a}</artifactId>"
        f"<version>{v}</version></dependency>"
        for g, a, v in deps
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.orchestrator</groupId>
  <artifactId>devkafka-jars</artifactId>
  <version>{KAFKA_VERSION}</version>
  <packaging>pom</packaging>
  <dependencies>
{dep_xml}
  </dependencies>
  <build>
    <plugins>
      <plugin>
        <groupId>org.apache.maven.plugins</groupId>
        <artifactId>maven-dependency-plugin</artifactId>
        <version>{_DEPENDENCY_PLUGIN}</version>
      </plugin>
    </plugins>
  </build>
</project>
"""


@contextmanager
def _cache_lock() -> Iterator[None]:
    """Serialise downloads so two processes (CLI and tests) never fill the same folder at once."""
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run_maven(work: Path, output: Path) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise DevKafkaError(
            "Maven (mvn) not found: it fetches the Kafka broker jars from Maven Central once "
            "(install the 'maven' package)."
        )
    (work / "pom.xml").write_text(render_pom(), encoding="utf-8")
    command = [
        mvn, "-q", "-B", "-Dstyle.color=never", "-f", str(work / "pom.xml"),
        f"org.apache.maven.plugins:maven-dependency-plugin:{_DEPENDENCY_PLUGIN}:copy-dependencies",
        "-DincludeScope=runtime", f"-DoutputDirectory={output}",
    ]  # fmt: skip
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=_MAVEN_TIMEOUT_S, check=False, cwd=work
        )
    except subprocess.TimeoutExpired as exc:
        raise DevKafkaError(
            f"Maven took over {_MAVEN_TIMEOUT_S} s fetching the Kafka jars; is Maven Central reachable?"
        ) from exc
    if result.returncode != 0:
        tail = "\n".join(_maven_errors(result.stdout + result.stderr))
        raise DevKafkaError(
            f"Maven could not fetch org.apache.kafka:kafka_{SCALA_VERSION}:{KAFKA_VERSION} "
            f"(exit {result.returncode}). Is Maven Central reachable (proxy, ~/.m2/settings.xml)?\n{tail}"
        )


_MAVEN_BOILERPLATE = ("To see the full", "Re-run Maven", "For more information", "[Help")


def _maven_errors(output: str) -> list[str]:
    """The informative ``[ERROR]`` lines of Maven's output, without colour codes and advice boilerplate."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in output.splitlines()]
    errors = [
        line for line in lines if line.startswith("[ERROR] ") and not line[8:].startswith(_MAVEN_BOILERPLATE)
    ]
    return (errors or [line for line in lines if line])[:8]


def ensure_jars() -> Path:
    """Return the broker's ``lib`` folder, downloading the jars first if this machine lacks them."""
    if jars_present():
        return lib_dir()
    check_java()
    with _cache_lock():
        if jars_present():  # another process finished while we waited for the lock
            return lib_dir()
        with tempfile.TemporaryDirectory(prefix="download-", dir=cache_dir()) as tmp:
            staging = Path(tmp) / "lib"
            _run_maven(Path(tmp), staging)
            if not any(staging.glob("kafka_*.jar")):
                raise DevKafkaError(f"Maven finished but put no kafka_*.jar in {staging}")
            (staging / _COMPLETE_MARKER).write_text(KAFKA_VERSION + "\n", encoding="utf-8")
            shutil.rmtree(lib_dir(), ignore_errors=True)
            staging.rename(lib_dir())
    return lib_dir()
