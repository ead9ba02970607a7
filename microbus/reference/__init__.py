"""The reference application, shipped with microbus: ``microbus.reference.schemas`` (message contracts) and
``microbus.reference.daemons`` (the orders and fulfilment daemons, the demo, the reference topology).

In the repository they live in the top-level ``daemons/`` and ``schemas/`` folders, the layout a service is
expected to copy; the wheel installs them under this package so they never collide with a user's own.
"""
