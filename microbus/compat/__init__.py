"""microcosm-pubsub's import paths, mapped onto microbus: migrate a service by changing its imports only.

=========================================  ==============================================
microcosm-pubsub 3.0.0                     microbus
=========================================  ==============================================
``microcosm_pubsub.decorators``            ``microbus.compat.decorators`` (``handles``, ``schema``)
``microcosm_pubsub.codecs``                ``microbus.compat.codecs`` (``PubSubMessageSchema``, …)
``microcosm_pubsub.conventions``           ``microbus.compat.conventions`` (``created``, ``URIMessageSchema``, …)
``microcosm_pubsub.daemon``                ``microbus.compat.daemon`` (``ConsumerDaemon``)
``microcosm_pubsub.errors``                ``microbus.compat.errors`` (``Nack``, ``SkipMessage``, …)
``microcosm_pubsub.producer``              ``microbus.compat.producer`` (``deferred``, ``deferred_batch``, …)
``microcosm_pubsub.matchers``              ``microbus.compat.matchers`` (``published``, …; needs PyHamcrest)
=========================================  ==============================================

Where microcosm-pubsub's behaviour differs from microbus's own, the compat names keep the peer's: schemas drop
undeclared fields on produce, and ``ConsumerDaemon`` acks messages of unknown media types and gives convention
media types their convention schemas. ``docs/migrating.md`` lists what changes and the flags involved.

The graph components keep microcosm-pubsub's names here: importing ``microbus.compat`` calls
:func:`microbus.use_familiar_names` (``graph.sns_producer`` is ``graph.microbus_sns_producer``, …), which raises
``ConfigurationError`` when microcosm-pubsub itself is installed in the environment. Configuration sections
take microbus's names (``microbus_sqs_consumer``, …); a section under a familiar name is refused, naming the
section to use.
"""

from microbus.aliases import use_familiar_names

use_familiar_names()
