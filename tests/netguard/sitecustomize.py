"""Installs the test run's network guard in every Python subprocess (this folder is first on PYTHONPATH)."""
try:
    from netguard import install
except ImportError:  # pragma: no cover
    install = None
if install is not None:
    install()
