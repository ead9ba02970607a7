"""``microcosm_pubsub.daemon``: ``ConsumerDaemon`` with microcosm-pubsub's conventions.

- ``name`` may be a property, as in microcosm-pubsub (``@property def name(self): return "example"``);
- ``daemon.run()`` without arguments parses the command line (``--sqs-queue-url``, ``--debug``, ``--testing``
  and microbus's options) and runs until SIGTERM;
- as in microcosm-pubsub, messages of media types this daemon has no schema or handler for are acked and
  ignored (``microbus_sqs_message_dispatcher.skip_unknown_media_types``), and convention media types without a schema
  get their convention schema (``microbus_pubsub_message_schema_registry.auto_register``). Set either to false in the
  configuration to get microbus's defaults (dead-letter them).
"""

from __future__ import annotations

from typing import Any

from microbus.consume.daemon import ConsumerDaemon as _ConsumerDaemon
from microbus.consume.daemon import daemon_command
from microbus.errors import ConfigurationError


class ConsumerDaemon(_ConsumerDaemon):
    """A consumer daemon written the microcosm-pubsub way; see the module docstring."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        declared = cls.__dict__.get("name")
        if isinstance(declared, property) and declared.fget is not None:
            try:
                cls.name = declared.fget(cls)
            except Exception as exc:
                raise ConfigurationError(
                    f"{cls.__qualname__}.name must not depend on the instance: make it a class attribute "
                    f'(name = "…") ({type(exc).__name__}: {exc})'
                ) from exc

    @property
    def defaults(self) -> dict[str, Any]:
        """microbus's defaults, with microcosm-pubsub's handling of unknown and convention media types."""
        return {
            **super().defaults,
            "microbus_sqs_message_dispatcher": {"skip_unknown_media_types": True},
            "microbus_pubsub_message_schema_registry": {"auto_register": True},
        }

    def run(self, **options: Any) -> None:
        """Without arguments, parse the command line and run, as microcosm-pubsub's ``run()`` does; with
        arguments, :meth:`microbus.ConsumerDaemon.run`."""
        if options:
            super().run(**options)
            return
        daemon_command(type(self))()


__all__ = ["ConsumerDaemon"]
