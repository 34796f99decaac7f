"""The RabbitMQ side of the worker (docs/contract.md §1-§3): nothing here knows about SSH.

Modules, read top to bottom:

* :mod:`~worker.consumer.topology` -- declare the exchanges and queues of §1, idempotently.
* :mod:`~worker.consumer.intake` -- bytes to a request, or to the precise reason it is not one;
  :mod:`~worker.consumer.schema_errors` spells a schema failure out, field by field.
* :mod:`~worker.consumer.events` -- result events as structured CloudEvents, with confirms;
  which ``reply_to`` is answered.
* :mod:`~worker.consumer.results` -- the handler's outcome, or the rejection, as event bytes;
  the failsafe ``internal_error`` event when they cannot be made.
* :mod:`~worker.consumer.settlement` -- ``decide`` / ``settle``, the one place that acks.
* :mod:`~worker.consumer.app` -- the loop: ``run_worker``.
* :mod:`~worker.consumer.client` -- ``publish_request`` for the CLI, optionally waiting.

Decisions where the contract is silent:

* ``correlationid`` (the CloudEvents attribute) is the request id, as in the §3 example;
  without any request id it is the request's AMQP ``correlation_id``, else absent. The AMQP
  ``correlation_id`` *property* of the event (on the exchange and on ``reply_to``) is the
  request's own ``correlation_id`` when it has one (RabbitMQ's RPC convention), else the
  request id.
* Event attributes that are null (``subject``, ``correlationid``) are left out of the JSON:
  strict CloudEvents readers, the official SDK among them, reject null attributes.
* A request without ``requestId`` and ``message_id`` is answered under
  ``sha256:<hex of the body>``; an unsafe ``message_id`` is never used as a request id.
* Bodies that cannot be read at all (over 64 KiB, not UTF-8, not JSON) are answered with a
  ``rejected`` event and then dead-lettered, and so is a delivery answered with the failsafe
  ``failed`` / ``internal_error`` event (a bug reading it or encoding its event); readable
  but invalid requests are answered and acked. ``failed`` and the other terminal outcomes
  are acked: retrying is the publisher's decision, made on the event.
* ``reply_to`` is answered only when it is direct reply-to (``amq.rabbitmq.reply-to``) or a
  queue name with one of the ``reply_to_prefixes`` (default ``amq.gen-``); any other gets a
  warning in the log and no reply, and the event still goes to the event exchange.
* Events are published with ``mandatory`` off: no subscriber yet, or a caller that went
  away, is no reason to process a request again.
"""
