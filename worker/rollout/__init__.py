"""``dhcp-failover-worker rollout``: one change across many pairs, through the queue.

The workers do the changes; a rollout only plans, publishes, waits and decides. Modules, in
the order a rollout uses them:

* :mod:`~worker.rollout.discovery` -- the pairs: every relationship whose primary and
  secondary are both in the inventory, read from the servers' own configs.
* :mod:`~worker.rollout.spec` -- what a rollout changes and how (the command line's choices).
* :mod:`~worker.rollout.ids` -- rollout ids and the request ids derived from them.
* :mod:`~worker.rollout.waves` -- the wave plan (``--waves``) and the global failure budget.
* :mod:`~worker.rollout.broker` -- one AMQP connection publishing requests and routing each
  result event back to the pair that waits for it.
* :mod:`~worker.rollout.results` -- the results file (JSON lines) a rollout appends to and
  ``rollout status`` (and a rerun) reads back.
* :mod:`~worker.rollout.engine` -- preflight dry runs, then the waves under the budget.
* :mod:`~worker.rollout.display` -- the preflight summary, progress bar and final table.
* :mod:`~worker.rollout.cli` -- the click commands.
"""
