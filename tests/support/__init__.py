"""Test support code: base images made locally from Debian packages."""
