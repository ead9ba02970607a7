"""Daemons of the reference application, each runnable as a console entry point."""
