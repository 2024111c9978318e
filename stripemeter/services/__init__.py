"""Services that the worker, the API and the CLI run: the Stripe writer, the reconciler (proving
that Stripe holds what was counted), the replayer (the operator's repair tool) and API keys."""
