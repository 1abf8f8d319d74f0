"""Test helpers shared by several test modules (fakes, fixture builders); no tests here.

tests/ is on sys.path (pytest puts the rootdir conftest's folder there), so a test module
imports these as ``from support.NAME import ...``.
"""
