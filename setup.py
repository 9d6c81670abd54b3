"""Build hook, nothing else (the project is described in pyproject.toml): the fake transport
(remote/fake.py) is for the tests only and stays out of the wheel; an editable install and the
tests still import it from the source tree."""

from setuptools import setup
from setuptools.command.build_py import build_py

TEST_ONLY = {("remote", "fake")}


class BuildPy(build_py):  # type: ignore[misc]
    def find_package_modules(self, package: str, package_dir: str) -> list[tuple[str, str, str]]:
        found: list[tuple[str, str, str]] = super().find_package_modules(package, package_dir)
        return [m for m in found if (m[0], m[1]) not in TEST_ONLY]


setup(cmdclass={"build_py": BuildPy})
