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
"""
