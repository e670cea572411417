"""Everything that touches Stripe, apart from the web endpoints of
:mod:`usageflow.integrations.stripe`.

* :mod:`~usageflow.stripe.events`: pure webhook decisions: verify a webhook, read an event into
  the changes one store call applies, the order of subscription states;
* :mod:`~usageflow.stripe.webhooks`: the webhook operation (verify, decide, apply);
* :mod:`~usageflow.stripe.api`: Stripe API calls: plan sync, reconcile, meter export;
* :mod:`~usageflow.stripe.prices`: what a price means to a plan (amount, metadata limits,
  Payment Links), used by the core too;
* :mod:`~usageflow.stripe.results`: the result models (public through
  :mod:`usageflow.integrations.stripe`).

Internal: the public names are the flows' methods and what ``usageflow.integrations.stripe``
re-exports. Only :mod:`~usageflow.stripe.events` and :mod:`~usageflow.stripe.api` import the
``stripe`` library, inside the functions that need it, so ``import usageflow`` works without it.
This package imports none of its modules here: the core imports
:mod:`~usageflow.stripe.prices`, and the operations import the core.
"""
